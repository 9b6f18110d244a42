"""``voice-bridge forget +1555…`` against a running server: no byte of the caller left behind, and admitted again.

The server (real uvicorn) keeps its call records in SQLite and its limits in SQLite or a
real ``redis-server``; it stays up while the command runs, holding its connections, so
SQLite cannot simply drop the WAL on the last close. After ``forget`` the caller's
transcript text and number must be in neither the database file nor its ``-wal`` file
(deleted rows live on in freed pages and old WAL frames unless overwritten), and the
rate-limited caller must get through again.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from agent_voice_bridge.cli import main as cli_main
from agent_voice_bridge.security.limits import MemoryLimitStore, caller_key, open_store
from agent_voice_bridge.storage import CallRecord, CallStore, Turn
from conftest import LiveServer
from test_security import PIPELINE, call_form, post, redis_url, verbs  # noqa: F401 - redis_url is a fixture

NUMBER, OTHER = "+15550107788", "+15550109900"
SECRET = "my card PIN is zebra kumquat 4711"
RATE = {"calls": 1, "per_seconds": 3600}


def server_yaml(tmp_path: Path, store: str) -> str:
    doc = {"server": {"host": "127.0.0.1"}, "security": {"store": store, "rate_limit": RATE},
           "storage": {"url": f"sqlite:///{tmp_path}/calls.db"}, "pipeline": PIPELINE}
    return yaml.safe_dump(doc, sort_keys=False)


def file_bytes(path: Path) -> bytes:
    """The file and its WAL, as they are on disk."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def stored_call_with_transcript(server: LiveServer, caller: str, text: str) -> None:
    sid = call_form()["CallSid"]
    server.db(CallStore.start_call, CallRecord(call_sid=sid, started_at=datetime.now(UTC), caller=caller))
    for i in range(20):  # a few pages' worth, as a long call leaves
        server.db(CallStore.add_turn, sid, Turn(speaker="caller", text=f"{text} ({i})", started_ms=1000.0 * i))


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
async def test_forget_leaves_no_trace_in_the_files_and_lets_a_rate_limited_caller_in(
        tmp_path: Path, store_kind: str, request: pytest.FixtureRequest) -> None:
    limits_file = tmp_path / "limits.sqlite"
    spec = f"sqlite:///{limits_file}" if store_kind == "sqlite" else request.getfixturevalue("redis_url")
    config = tmp_path / "server.yaml"
    config.write_text(server_yaml(tmp_path, spec))
    database = tmp_path / "calls.db"
    with LiveServer(config.read_text(), str(config), store=open_store(spec, 0)) as server:
        assert verbs(await post(server.http_url, call_form(from_number=NUMBER))) == ["Connect"]
        assert verbs(await post(server.http_url, call_form(from_number=NUMBER))) == ["Say", "Hangup"], "rate-limited"
        await stored_call_with_transcript(server, NUMBER, SECRET)
        await stored_call_with_transcript(server, OTHER, "someone else's words")
        with sqlite3.connect(database) as db:  # what SQLite's auto-checkpoint does on a busy server: into the file
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        assert SECRET.encode() in database.read_bytes()
        if store_kind == "sqlite":
            assert NUMBER.encode() in file_bytes(limits_file)

        assert await asyncio.to_thread(cli_main, ["forget", NUMBER, "-c", str(config)]) == 0

        calls = file_bytes(database)
        assert SECRET.encode() not in calls and NUMBER.encode() not in calls
        assert b"someone else's words" in calls, "the other caller's records stay"
        if store_kind == "sqlite":
            assert NUMBER.encode() not in file_bytes(limits_file)
        assert verbs(await post(server.http_url, call_form(from_number=NUMBER))) == ["Connect"], "admitted again"
        assert verbs(await post(server.http_url, call_form(from_number=NUMBER))) == ["Say", "Hangup"]
        assert verbs(await post(server.http_url, call_form(from_number=OTHER))) == ["Connect"]
        assert verbs(await post(server.http_url, call_form(from_number=OTHER))) == ["Say", "Hangup"], \
            "another caller's window is untouched"
        if store_kind == "redis":
            assert server.loop is not None
            asyncio.run_coroutine_threadsafe(server.app.state.gate.store.close(), server.loop).result(5)


async def test_the_memory_store_forgets_a_caller_in_process(tmp_path: Path) -> None:
    store = MemoryLimitStore()
    with LiveServer(server_yaml(tmp_path, "memory"), store=store) as server:
        assert verbs(await post(server.http_url, call_form(from_number=NUMBER))) == ["Connect"]
        assert verbs(await post(server.http_url, call_form(from_number=NUMBER))) == ["Say", "Hangup"]
        assert server.loop is not None
        asyncio.run_coroutine_threadsafe(store.forget(caller_key(NUMBER)), server.loop).result(5)
        assert verbs(await post(server.http_url, call_form(from_number=NUMBER))) == ["Connect"]
