"""From a store URL to a configured async SQLAlchemy engine.

Operators write the URL they know (``sqlite:///voice-bridge.db``, ``postgresql://user:pw@host/db``); this
module maps it onto the async drivers (aiosqlite, asyncpg), refuses anything else with a message that never
contains the password, and sets SQLite up for several worker processes sharing one file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agent_voice_bridge.private_files import create_private

DRIVERS = {
    "sqlite": ("sqlite", "sqlite+aiosqlite"),
    "sqlite+aiosqlite": ("sqlite", "sqlite+aiosqlite"),
    "postgresql": ("postgresql", "postgresql+asyncpg"),
    "postgres": ("postgresql", "postgresql+asyncpg"),
    "postgresql+asyncpg": ("postgresql", "postgresql+asyncpg"),
}
EXAMPLES = "sqlite:///voice-bridge.db or postgresql://user:password@host:5432/dbname"
# Execution option marking a connection that will write: on SQLite its transaction starts with BEGIN IMMEDIATE
# (take the write lock up front, waiting up to the busy timeout) instead of failing half-way with
# "database is locked" when another process wrote in between.
WRITE = "voice_bridge_write"
SQLITE_BUSY_TIMEOUT_S = 15.0


def mask_password(text: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host``, for strings SQLAlchemy cannot parse.
    Greedy up to the last ``@``: a password may itself contain ``@``; masking too much is harmless."""
    return re.sub(r"(://[^:/@]*):.*@", r"\1:***@", text)


@dataclass(frozen=True)
class StoreURL:
    """A validated store URL: what to connect to, and what may be shown in logs."""

    url: URL  # with the async driver
    display: str  # password masked
    backend: Literal["sqlite", "postgresql"]
    sqlite_path: Path | None  # the database file (None: PostgreSQL or an in-memory SQLite)

    @property
    def memory(self) -> bool:
        return self.backend == "sqlite" and self.sqlite_path is None


def parse_store_url(raw: str) -> StoreURL:
    """Validate and map onto the async drivers; ValueError (without the password) when unusable."""
    if not isinstance(raw, str) or "://" not in raw:  # not echoed: without a scheme, what is the password?
        raise ValueError(f"call-store URL is not a URL (no scheme://); expected {EXAMPLES}")
    try:
        url = make_url(raw)
        url.port  # noqa: B018 - parsed lazily in some versions; fail here, not at the first query
    except (ArgumentError, ValueError):
        raise ValueError(f"call-store URL {mask_password(raw)!r} cannot be parsed; expected {EXAMPLES}") from None
    display = url.render_as_string(hide_password=True)
    if url.drivername not in DRIVERS:
        raise ValueError(f"call-store URL {display!r}: unsupported database {url.drivername!r}; expected {EXAMPLES}")
    backend, driver = DRIVERS[url.drivername]
    url = url.set(drivername=driver)
    if backend == "sqlite":
        if not url.database:
            raise ValueError(f"call-store URL {display!r} names no database file; expected {EXAMPLES}")
        path = None if url.database == ":memory:" else Path(url.database)
        return StoreURL(url, display, "sqlite", path)
    if not url.database:
        raise ValueError(f"call-store URL {display!r} names no database; expected {EXAMPLES}")
    if "sslmode" in url.query:  # libpq spelling; asyncpg calls it ssl (same values: require, verify-full, ...)
        query = dict(url.query)
        query.setdefault("ssl", query.pop("sslmode"))
        url = url.set(query=query)
    return StoreURL(url, display, "postgresql", None)


def create_engine(target: StoreURL) -> AsyncEngine:
    """One engine (and connection pool) per process."""
    if target.backend == "postgresql":
        return create_async_engine(target.url, pool_pre_ping=True)
    engine = create_async_engine(target.url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    _configure_sqlite(engine, wal=not target.memory)
    path = target.sqlite_path
    if path is not None:
        # Before SQLite first creates the file (not when the store is made: it connects lazily): 0600, and so its
        # -wal/-shm, since call records name people.
        event.listen(engine.sync_engine, "do_connect", lambda *_: create_private(path))
    return engine


def _configure_sqlite(engine: AsyncEngine, wal: bool) -> None:
    """WAL (readers never block the writer; worker processes share the file), a busy timeout (wait for
    another process's write instead of failing), foreign keys, and our own BEGIN: the driver's implicit one
    would leave DDL (the migrations) outside the transaction and cannot say IMMEDIATE."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the driver; see _on_begin
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if wal:
            cursor.execute("PRAGMA journal_mode = WAL")  # persistent in the file; a no-op once set
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA secure_delete = ON")  # forget: deleted rows are overwritten, not left in free pages
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
