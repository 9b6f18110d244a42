"""CallStore: call records and transcripts behind one small async interface.

One per process: it owns the engine and its connection pool and is safe for many concurrent calls on one
event loop. Every write is its own short transaction, committed before the method returns, so a worker that
crashes mid-call leaves everything said up to then on disk.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import MISSING, asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import ColumnElement, and_, delete, exists, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncConnection

from . import tables as t
from .engine import WRITE, create_engine, parse_store_url
from .records import CallRecord, Forgotten, Message, Turn

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key serialising migrations across hosts ("avbstore" as 8 bytes; any constant would do).
PG_MIGRATION_LOCK = int.from_bytes(b"avbstore", "big") & 0x7FFF_FFFF_FFFF_FFFF
_RECORD_FIELDS = [f.name for f in fields(CallRecord)]
_UPDATABLE = frozenset(_RECORD_FIELDS) - {"call_sid"}
# alembic's `context` is a module-level proxy: two migrations interleaving on one event loop would trample it.
_alembic_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _defaults() -> dict[str, Any]:
    """CallRecord's default per field (fields without one are absent)."""
    out: dict[str, Any] = {}
    for f in fields(CallRecord):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def _record(row: Row[Any]) -> CallRecord:
    values = {name: row._mapping[name] for name in _RECORD_FIELDS}
    values["usage"] = dict(values["usage"] or {})
    values["parameters"] = dict(values["parameters"] or {})
    values["turn_latency"] = list(values["turn_latency"] or [])
    return CallRecord(**values)


def _turn(row: Row[Any]) -> Turn:
    m = row._mapping
    return Turn(speaker=m["speaker"], text=m["text"], started_ms=m["started_ms"], truncated=bool(m["truncated"]),
                heard_ms=m["heard_ms"], seq=m["seq"])


def _message(row: Row[Any]) -> Message:
    m = row._mapping
    return Message(created_at=m["created_at"], duration_ms=m["duration_ms"], audio_path=m["audio_path"],
                   ended_by=m["ended_by"], transcript=m["transcript"], id=m["id"], call_sid=m["call_sid"])


def _party(number: str) -> ColumnElement[bool]:
    """Calls with this person: they called (caller), or we called them (callee of an outbound call)."""
    return or_(t.calls.c.caller == number, and_(t.calls.c.direction == "outbound", t.calls.c.callee == number))


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class CallStore:
    """Async, one per process (engine + connection pool); safe for many concurrent calls.

    ``url``: ``sqlite:///path.db`` (relative to the working directory, or ``sqlite:////abs/path.db``),
    ``sqlite:///:memory:``, or ``postgresql://user:password@host:port/db`` (``postgres://`` too). Call
    ``await migrate()`` once at start-up before anything else, and ``await close()`` at shutdown.
    """

    def __init__(self, url: str):
        self._target = parse_store_url(url)
        self._engine = create_engine(self._target)
        self._writer = self._engine.execution_options(**{WRITE: True})
        self._sqlite = self._target.backend == "sqlite"
        # SQLite has one writer at a time anyway: queue this process's writers here rather than in the busy
        # handler's sleeps. An in-memory database is one shared connection, so readers queue too.
        self._lock = asyncio.Lock() if self._sqlite else None
        self._insert = sqlite.insert if self._sqlite else postgresql.insert

    @property
    def url_for_display(self) -> str:
        """The URL with its password masked, for logs and status pages."""
        return self._target.display

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits on leaving (rolls back on an exception)."""
        async with self._lock or nullcontext(), self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        lock = self._lock if self._target.memory else None
        async with lock or nullcontext(), self._engine.connect() as conn:
            yield conn

    # ------------------------------------------------------------------ lifecycle

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (alembic upgrade head); a no-op when it is there already.

        Safe when several processes or hosts start at once: PostgreSQL serialises on an advisory lock held
        by the migrating transaction, SQLite on an flock()ed file beside the database. The first to get the
        lock migrates, the others then find nothing to do.
        """
        loop = asyncio.get_running_loop()
        alembic_lock = _alembic_locks.setdefault(loop, asyncio.Lock())
        async with alembic_lock, self._file_lock(), self._write() as conn:
            if not self._sqlite:
                await conn.execute(text(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})"))
            await conn.run_sync(_upgrade)

    def _file_lock(self) -> AbstractAsyncContextManager[None]:
        path = self._target.sqlite_path
        return _flocked(path.with_name(path.name + ".migrate-lock")) if path else nullcontext()

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._engine.dispose()

    async def truncate_wal(self) -> None:
        """Checkpoint SQLite's WAL into the file and truncate it to nothing (a no-op elsewhere).

        A deleted row's earlier versions stay in the ``-wal`` file until its frames are reused; after ``forget``
        they must not outlive the delete. (``secure_delete`` overwrites the freed pages in the file itself.)
        """
        if self._target.sqlite_path is None:
            return
        async with self._lock or nullcontext(), self._engine.connect() as conn:
            busy, _, _ = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
        if busy:
            raise RuntimeError(f"{self._target.sqlite_path}: a reader kept the WAL from being truncated; try again")

    # ------------------------------------------------------------------ writes

    async def start_call(self, record: CallRecord) -> None:
        """Insert the call. If the row exists already (an outbound call created when dialling, a status
        callback that came first), overwrite only the fields this record sets to something other than
        CallRecord's defaults (``started_at`` always counts as set), keeping what the earlier writer knew."""
        row = asdict(record)
        defaults = _defaults()
        changed = [name for name in _UPDATABLE if name not in defaults or row[name] != defaults[name]]
        stmt = self._insert(t.calls).values(**row)
        stmt = stmt.on_conflict_do_update(index_elements=[t.calls.c.call_sid],
                                          set_={name: stmt.excluded[name] for name in changed})
        async with self._write() as conn:
            await conn.execute(stmt)

    async def update_call(self, call_sid: str, **fields: Any) -> None:
        """Set any CallRecord fields (not call_sid). With no row yet (status callbacks may come first) insert
        a minimal one, ``started_at`` now unless given."""
        unknown = sorted(set(fields) - _UPDATABLE)
        if unknown:
            raise TypeError(f"update_call() got field(s) CallRecord cannot update: {', '.join(unknown)}")
        row = asdict(CallRecord(call_sid=call_sid, started_at=_utcnow())) | fields
        stmt = self._insert(t.calls).values(**row)
        if fields:
            stmt = stmt.on_conflict_do_update(index_elements=[t.calls.c.call_sid],
                                              set_={name: stmt.excluded[name] for name in fields})
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=[t.calls.c.call_sid])
        async with self._write() as conn:
            await conn.execute(stmt)

    async def add_turn(self, call_sid: str, turn: Turn) -> int:
        """Append a turn and commit; returns its seq (1, 2, ... per call, whatever ``turn.seq`` says).

        The seq comes from bumping ``calls.last_seq`` in the same transaction: that UPDATE locks the call's
        row (PostgreSQL) or the database (SQLite) until commit, so concurrent appends get consecutive
        numbers with no gaps or duplicates. A call without a row gets a minimal one, as in update_call.
        """
        bump = self._insert(t.calls).values(**asdict(CallRecord(call_sid=call_sid, started_at=_utcnow())),
                                            last_seq=1)
        bump = bump.on_conflict_do_update(index_elements=[t.calls.c.call_sid],
                                          set_={"last_seq": t.calls.c.last_seq + 1}).returning(t.calls.c.last_seq)
        async with self._write() as conn:
            seq = (await conn.execute(bump)).scalar_one()
            await conn.execute(t.turns.insert().values(
                call_sid=call_sid, seq=seq, speaker=turn.speaker, text=turn.text, started_ms=turn.started_ms,
                truncated=turn.truncated, heard_ms=turn.heard_ms))
        return seq

    async def add_message(self, call_sid: str, message: Message) -> int:
        """Store a voicemail message and commit; returns its id. A call without a row gets a minimal one,
        as in update_call (``message.id`` and ``message.call_sid`` are ignored)."""
        call = self._insert(t.calls).values(**asdict(CallRecord(call_sid=call_sid, started_at=_utcnow())))
        call = call.on_conflict_do_nothing(index_elements=[t.calls.c.call_sid])
        insert = t.messages.insert().values(
            call_sid=call_sid, created_at=message.created_at, duration_ms=message.duration_ms,
            audio_path=message.audio_path, transcript=message.transcript, ended_by=message.ended_by)
        async with self._write() as conn:
            await conn.execute(call)
            return (await conn.execute(insert.returning(t.messages.c.id))).scalar_one()

    async def set_message_transcript(self, message_id: int, transcript: str) -> None:
        async with self._write() as conn:
            await conn.execute(t.messages.update().where(t.messages.c.id == message_id)
                               .values(transcript=transcript))

    async def forget(self, caller: str) -> list[str]:
        """Delete every call with this number (it called, or an outbound call went to it), their turns and
        voicemail messages. Returns the recording and message audio paths those calls had; deleting the
        files is the caller's job."""
        return (await self.forget_caller(caller)).audio_paths

    async def forget_caller(self, caller: str) -> Forgotten:
        """``forget``, saying how much went: so ``voice-bridge forget`` can tell a typo from a deletion."""
        if not caller:
            return Forgotten()
        sids = select(t.calls.c.call_sid).where(_party(caller))
        async with self._write() as conn:
            turns = await conn.execute(delete(t.turns).where(t.turns.c.call_sid.in_(sids)))
            messages = (await conn.execute(delete(t.messages).where(t.messages.c.call_sid.in_(sids))
                                           .returning(t.messages.c.audio_path))).all()
            calls = (await conn.execute(delete(t.calls).where(_party(caller))
                                        .returning(t.calls.c.recording_path))).all()
        await self.truncate_wal()  # the deleted rows' old copies are in the WAL until then
        audio = [path for (path,) in calls if path] + [path for (path,) in messages if path]
        return Forgotten(calls=len(calls), turns=turns.rowcount, messages=len(messages), audio_paths=audio)

    # ------------------------------------------------------------------ reads

    async def get_call(self, call_sid: str) -> CallRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(select(t.calls).where(t.calls.c.call_sid == call_sid))).first()
        return _record(row) if row else None

    async def transcript(self, call_sid: str) -> list[Turn]:
        """The call's turns in seq order."""
        async with self._read() as conn:
            result = await conn.execute(select(t.turns).where(t.turns.c.call_sid == call_sid).order_by(t.turns.c.seq))
            return [_turn(row) for row in result]

    async def messages(self, call_sid: str) -> list[Message]:
        """The call's voicemail messages, oldest first."""
        query = (select(t.messages).where(t.messages.c.call_sid == call_sid)
                 .order_by(t.messages.c.created_at, t.messages.c.id))
        async with self._read() as conn:
            return [_message(row) for row in await conn.execute(query)]

    async def recent_messages(self, limit: int = 20) -> list[tuple[CallRecord, Message]]:
        """The newest voicemail messages (by created_at), each with its call's record."""
        query = (select(t.messages, *[t.calls.c[name] for name in _RECORD_FIELDS if name != "call_sid"])
                 .join(t.calls, t.calls.c.call_sid == t.messages.c.call_sid)
                 .order_by(t.messages.c.created_at.desc(), t.messages.c.id.desc()).limit(max(limit, 0)))
        async with self._read() as conn:
            return [(_record(row), _message(row)) for row in await conn.execute(query)]

    async def recent_calls(self, limit: int = 20, caller: str | None = None,
                           line: str | None = None) -> list[CallRecord]:
        """Newest first by started_at; ``caller`` keeps the calls with that number (as in forget), ``line``
        those on that line."""
        query = select(t.calls).order_by(t.calls.c.started_at.desc(), t.calls.c.call_sid.desc()).limit(max(limit, 0))
        if caller is not None:
            query = query.where(_party(caller))
        if line is not None:
            query = query.where(t.calls.c.line == line)
        async with self._read() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def caller_history(self, caller: str, calls: int = 3,
                             exclude: str | None = None) -> list[tuple[CallRecord, list[Turn]]]:
        """That number's last ``calls`` calls (newest first) that have at least one turn, with their
        transcripts, leaving out call ``exclude`` (usually the current one). An empty number has no history:
        withheld caller IDs are not one person."""
        if not caller or calls <= 0:
            return []
        query = (select(t.calls)
                 .where(_party(caller), exists().where(t.turns.c.call_sid == t.calls.c.call_sid))
                 .order_by(t.calls.c.started_at.desc(), t.calls.c.call_sid.desc()).limit(calls))
        if exclude is not None:
            query = query.where(t.calls.c.call_sid != exclude)
        async with self._read() as conn:
            records = [_record(row) for row in await conn.execute(query)]
            by_call: dict[str, list[Turn]] = {r.call_sid: [] for r in records}
            if by_call:
                result = await conn.execute(select(t.turns).where(t.turns.c.call_sid.in_(list(by_call)))
                                            .order_by(t.turns.c.call_sid, t.turns.c.seq))
                for row in result:
                    by_call[row._mapping["call_sid"]].append(_turn(row))
        return [(record, by_call[record.call_sid]) for record in records]


@asynccontextmanager
async def _flocked(path: Path) -> AsyncIterator[None]:
    """Hold an exclusive flock() on ``path`` (created if missing; left in place), waiting in a thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
