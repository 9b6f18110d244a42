"""Shared counters behind the caller limits: per-caller rate, concurrent calls, one-time tokens.

Three backends with one interface: ``memory`` (one process), ``sqlite`` (every
worker process on one host: transactions serialise them), ``redis`` (many hosts:
Lua scripts keep each check-and-record atomic). All state expires on its own, so a
crashed worker cannot hold a call slot forever.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from agent_voice_bridge.private_files import create_private

if TYPE_CHECKING:
    from agent_voice_bridge.pipelines.config import BridgeConfig


class LimitStore(ABC):
    @abstractmethod
    async def hit(self, key: str, limit: int, window: float) -> bool:
        """Record one event for ``key`` if fewer than ``limit`` happened in the last ``window`` s."""

    @abstractmethod
    async def claim_call(self, call_id: str, limit: int | None, ttl: float) -> bool:
        """Take a live-call slot for ``ttl`` s (renewable) if fewer than ``limit`` are taken."""

    @abstractmethod
    async def release_call(self, call_id: str) -> None: ...

    @abstractmethod
    async def use_once(self, token_id: str, expires_at: float) -> bool:
        """True the first time ``token_id`` is seen (until it expires), False after."""

    @abstractmethod
    async def forget(self, key: str) -> None:
        """Drop every event recorded for ``key`` (``voice-bridge forget``: the number leaves no trace here)."""

    async def close(self) -> None:
        return None


def caller_key(identity: str, scope: str = "") -> str:
    """The rate-limit key of a caller (an E.164 number, or a SIP/client identity as it came), in the server-wide
    window or in that of the line ``scope`` (a line with a rate limit of its own)."""
    return f"caller:{identity}" + (f"@{scope}" if scope else "")


class MemoryLimitStore(LimitStore):
    def __init__(self) -> None:
        self._events: dict[str, list[float]] = {}
        self._calls: dict[str, float] = {}
        self._tokens: dict[str, float] = {}

    async def hit(self, key: str, limit: int, window: float) -> bool:
        now = time.time()
        events = [t for t in self._events.get(key, []) if t > now - window]
        allowed = len(events) < limit
        if allowed:
            events.append(now)
        self._events[key] = events
        return allowed

    async def claim_call(self, call_id: str, limit: int | None, ttl: float) -> bool:
        now = time.time()
        self._calls = {k: v for k, v in self._calls.items() if v > now}
        if call_id not in self._calls and limit is not None and len(self._calls) >= limit:
            return False
        self._calls[call_id] = now + ttl
        return True

    async def release_call(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    async def use_once(self, token_id: str, expires_at: float) -> bool:
        now = time.time()
        self._tokens = {k: v for k, v in self._tokens.items() if v > now}
        if token_id in self._tokens:
            return False
        self._tokens[token_id] = expires_at
        return True

    async def forget(self, key: str) -> None:
        self._events.pop(key, None)


class SQLiteLimitStore(LimitStore):
    """One file shared by the worker processes of one host."""

    def __init__(self, path: str | os.PathLike[str]):
        self._path = str(path)
        create_private(Path(self._path))  # 0600, and so its -wal/-shm
        with self._connect() as db:
            db.executescript("""
                PRAGMA journal_mode=WAL;
                CREATE TABLE IF NOT EXISTS events (key TEXT NOT NULL, at REAL NOT NULL);
                CREATE INDEX IF NOT EXISTS events_key_at ON events (key, at);
                CREATE TABLE IF NOT EXISTS calls (id TEXT PRIMARY KEY, expires REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, expires REAL NOT NULL);
            """)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=10, isolation_level=None)
        db.execute("PRAGMA secure_delete = ON")  # a deleted key's bytes are overwritten, not left in free pages
        return db

    def _transaction(self, fn, *args):
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db, time.time(), *args)
                db.execute("COMMIT")
                return result
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @staticmethod
    def _hit(db: sqlite3.Connection, now: float, key: str, limit: int, window: float) -> bool:
        db.execute("DELETE FROM events WHERE key = ? AND at <= ?", (key, now - window))
        (count,) = db.execute("SELECT COUNT(*) FROM events WHERE key = ?", (key,)).fetchone()
        if count >= limit:
            return False
        db.execute("INSERT INTO events (key, at) VALUES (?, ?)", (key, now))
        return True

    @staticmethod
    def _claim(db: sqlite3.Connection, now: float, call_id: str, limit: int | None, ttl: float) -> bool:
        db.execute("DELETE FROM calls WHERE expires <= ?", (now,))
        known = db.execute("SELECT 1 FROM calls WHERE id = ?", (call_id,)).fetchone()
        (count,) = db.execute("SELECT COUNT(*) FROM calls").fetchone()
        if not known and limit is not None and count >= limit:
            return False
        db.execute("INSERT OR REPLACE INTO calls (id, expires) VALUES (?, ?)", (call_id, now + ttl))
        return True

    @staticmethod
    def _use_once(db: sqlite3.Connection, now: float, token_id: str, expires_at: float) -> bool:
        db.execute("DELETE FROM tokens WHERE expires <= ?", (now,))
        return db.execute("INSERT OR IGNORE INTO tokens (id, expires) VALUES (?, ?)",
                          (token_id, expires_at)).rowcount == 1

    async def hit(self, key: str, limit: int, window: float) -> bool:
        return await asyncio.to_thread(self._transaction, self._hit, key, limit, window)

    async def claim_call(self, call_id: str, limit: int | None, ttl: float) -> bool:
        return await asyncio.to_thread(self._transaction, self._claim, call_id, limit, ttl)

    async def release_call(self, call_id: str) -> None:
        await asyncio.to_thread(self._transaction, lambda db, now: db.execute("DELETE FROM calls WHERE id = ?",
                                                                               (call_id,)))

    async def use_once(self, token_id: str, expires_at: float) -> bool:
        return await asyncio.to_thread(self._transaction, self._use_once, token_id, expires_at)

    async def forget(self, key: str) -> None:
        await asyncio.to_thread(self._transaction, lambda db, now: db.execute("DELETE FROM events WHERE key = ?",
                                                                               (key,)))
        await asyncio.to_thread(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy the WAL into the file and truncate it: the deleted rows' old copies live on in the WAL until then."""
        with self._connect() as db:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise sqlite3.OperationalError(f"{self._path}: a reader kept the WAL from being truncated; try again")


_HIT = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then return 0 end
redis.call('ZADD', key, now, ARGV[4])
redis.call('PEXPIRE', key, math.ceil(window * 1000))
return 1
"""
_CLAIM = """
local key, now, ttl, limit, id = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if limit >= 0 and not redis.call('ZSCORE', key, id) and redis.call('ZCARD', key) >= limit then return 0 end
redis.call('ZADD', key, now + ttl, id)
return 1
"""


class RedisLimitStore(LimitStore):
    """Shared by every host pointing at the same Redis database."""

    def __init__(self, url: str, prefix: str = "voice-bridge:"):
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._prefix = prefix
        self._hit_script = self._redis.register_script(_HIT)
        self._claim_script = self._redis.register_script(_CLAIM)

    async def hit(self, key: str, limit: int, window: float) -> bool:
        now = time.time()
        member = f"{now}:{os.getpid()}:{id(self)}:{time.perf_counter_ns()}"
        return bool(await self._hit_script(keys=[f"{self._prefix}rate:{key}"], args=[now, window, limit, member]))

    async def claim_call(self, call_id: str, limit: int | None, ttl: float) -> bool:
        args = [time.time(), ttl, -1 if limit is None else limit, call_id]
        return bool(await self._claim_script(keys=[f"{self._prefix}calls"], args=args))

    async def release_call(self, call_id: str) -> None:
        await self._redis.zrem(f"{self._prefix}calls", call_id)

    async def use_once(self, token_id: str, expires_at: float) -> bool:
        ttl = max(int(expires_at - time.time()) + 1, 1)
        return bool(await self._redis.set(f"{self._prefix}token:{token_id}", 1, nx=True, ex=ttl))

    async def forget(self, key: str) -> None:
        await self._redis.delete(f"{self._prefix}rate:{key}")

    async def close(self) -> None:
        await self._redis.aclose()


def default_sqlite_path(port: int) -> Path:
    """The server's own state directory (systemd's ``STATE_DIRECTORY``, else the working directory, where the
    call records' database lives too); never a shared temp dir, where anyone can create that name first."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state or ".") / f"voice-bridge-limits-{port}.sqlite"


def sqlite_path(spec: str, port: int) -> Path | None:
    """The file a ``sqlite`` or ``sqlite:///path`` store keeps its limits in; None for other stores."""
    if spec == "sqlite":
        return default_sqlite_path(port)
    if spec.startswith("sqlite:///"):
        return Path(spec.removeprefix("sqlite:///"))
    return None


def open_store(spec: str, port: int) -> LimitStore:
    """``memory``, ``sqlite`` (a file per port in the state directory), ``sqlite:///path`` or ``redis://…``."""
    if spec == "memory":
        return MemoryLimitStore()
    path = sqlite_path(spec, port)
    if path is not None:
        return SQLiteLimitStore(path)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisLimitStore(spec)
    raise ValueError(f"security.store: unknown store {spec!r} (memory, sqlite, sqlite:///path, redis://…)")


def forget_caller_limits(config: BridgeConfig, number: str, scopes: Iterable[str] = ()) -> bool:
    """Clear ``number``'s rate-limit windows in the store ``security.store`` names (for ``voice-bridge forget``):
    the server-wide one and those of the lines ``scopes`` (lines with a rate limit of their own).

    False when there is nothing to clear: a sqlite file no server has made yet, or ``memory``, which lives inside
    the serving process, out of a command's reach (its window expires after ``security.rate_limit.per_seconds``).
    """
    if config.security.store == "memory":
        return False
    path = sqlite_path(config.security.store, config.server.port)
    if path is not None and not path.exists():
        return False  # no server has kept limits there: nothing to clear, and no file to create

    async def run() -> None:
        store = open_store(config.security.store, config.server.port)
        try:
            for scope in ("", *scopes):
                await store.forget(caller_key(number, scope))
        finally:
            await store.close()

    asyncio.run(run())
    return True
