"""The call-records store on real databases: every test runs on a SQLite file and on a throwaway PostgreSQL
cluster (tests/databases.py), including the parts that involve several processes (concurrent migrations,
a worker killed mid-call)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from agent_voice_bridge.storage import CallRecord, CallStore, Turn
from agent_voice_bridge.storage.store import MIGRATIONS
from agent_voice_bridge.storage.tables import metadata

VERSION_TABLE = "voice_bridge_alembic_version"
T0 = datetime(2025, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def store(storage_url: str) -> AsyncIterator[CallStore]:
    s = CallStore(storage_url)
    await s.migrate()
    yield s
    await s.close()


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head
    return head


async def schema_version(s: CallStore) -> list[str]:
    async with s._engine.connect() as conn:
        return list((await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalars())


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def full_record(call_sid: str = "CA0001") -> CallRecord:
    """Every field set to something other than its default."""
    return CallRecord(
        call_sid=call_sid, started_at=T0, stream_sid="MZ01", caller="+15550100001", callee="+15550100999",
        direction="outbound", pipeline="pipelines/receptionist.yaml", status="completed", outcome="ai_ended",
        reason="said goodbye", ended_at=T0 + timedelta(seconds=95.5), barge_ins=3, replies=7, first_reply_ms=812.25,
        usage={"input_tokens": 1200, "output_tokens": 345}, parameters={"customer": "42", "lang": "de"},
        recording_path="recordings/CA0001.wav")


# --------------------------------------------------------------------------- migrations


async def test_migrate_twice_is_a_noop(storage_url: str) -> None:
    s = CallStore(storage_url)
    try:
        await s.migrate()
        assert await schema_version(s) == [head_revision()]
        await s.start_call(full_record())
        await s.add_turn("CA0001", Turn("caller", "hello", 100.0))
        await s.migrate()
        assert await schema_version(s) == [head_revision()]
        assert await s.get_call("CA0001") == full_record(), "a second migrate must not touch the data"
        assert [turn.text for turn in await s.transcript("CA0001")] == ["hello"]
    finally:
        await s.close()


async def test_migrations_create_what_tables_py_describes(store: CallStore) -> None:
    def diff(connection):  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return compare_metadata(context, metadata)

    async with store._engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        indexes = await conn.run_sync(lambda c: {tuple(i["column_names"]) for i in inspect(c).get_indexes("calls")})
    assert ("caller", "started_at") in indexes


async def test_sqlite_file_is_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there.db"
    s = CallStore(f"sqlite:///{path}")
    try:
        await s.migrate()
        await s.start_call(CallRecord("CA1", T0))
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("SELECT call_sid FROM calls").fetchall() == [("CA1",)]
    finally:
        await s.close()


def test_two_processes_migrating_at_once_both_succeed(storage_url: str) -> None:
    code = """
        import asyncio, sys
        from agent_voice_bridge.storage import CallStore
        async def main():
            store = CallStore(sys.argv[1])
            print("ready", flush=True)
            sys.stdin.readline()  # the parent releases both processes together
            await store.migrate()
            await store.close()
            print("migrated", flush=True)
        asyncio.run(main())
    """
    procs = [run_python(code, storage_url) for _ in range(2)]
    try:
        for proc in procs:  # both have imported everything and sit at the barrier
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert out == "migrated\n"

    async def check() -> list[str]:
        s = CallStore(storage_url)
        try:
            await s.start_call(CallRecord("CA1", T0))
            assert await s.get_call("CA1") == CallRecord("CA1", T0)
            return await schema_version(s)
        finally:
            await s.close()

    assert asyncio.run(check()) == [head_revision()]


# --------------------------------------------------------------------------- calls


async def test_a_call_round_trips_with_every_field(store: CallStore) -> None:
    record = full_record()
    await store.start_call(record)
    got = await store.get_call("CA0001")
    assert got == record
    assert got is not None and got.started_at.tzinfo is not None and got.started_at.utcoffset() == timedelta(0)
    assert got.ended_at is not None and got.ended_at.utcoffset() == timedelta(0)
    assert got.duration_s == pytest.approx(95.5)
    assert await store.get_call("CA-nonexistent") is None


async def test_start_update_and_end_a_call(store: CallStore) -> None:
    await store.start_call(CallRecord("CA1", T0, stream_sid="MZ1", caller="+15550100001", callee="+15550100999",
                                      pipeline="p.yaml", parameters={"k": "v"}))
    running = await store.get_call("CA1")
    assert running is not None
    assert (running.status, running.outcome, running.ended_at, running.duration_s) == ("in_progress", None, None, None)
    berlin = timezone(timedelta(hours=1))
    ended = (T0 + timedelta(minutes=2)).astimezone(berlin)  # any aware time is stored as the same instant
    await store.update_call("CA1", status="completed", outcome="caller_hung_up", ended_at=ended, barge_ins=2,
                            replies=4, first_reply_ms=640.5, usage={"total_tokens": 999})
    done = await store.get_call("CA1")
    assert done is not None
    assert (done.status, done.outcome, done.barge_ins, done.replies, done.first_reply_ms) == (
        "completed", "caller_hung_up", 2, 4, 640.5)
    assert done.ended_at == ended and done.ended_at.tzinfo == UTC
    assert done.duration_s == 120.0
    assert (done.caller, done.stream_sid, done.parameters, done.usage) == (
        "+15550100001", "MZ1", {"k": "v"}, {"total_tokens": 999})
    with pytest.raises(TypeError, match="colour"):
        await store.update_call("CA1", colour="red")
    with pytest.raises(TypeError, match="call_sid"):
        await store.update_call("CA1", call_sid="CA2")


async def test_update_before_start_then_start_fills_in(store: CallStore) -> None:
    before = datetime.now(UTC)
    await store.update_call("CA1", status="ringing")  # a status callback outran the media stream
    early = await store.get_call("CA1")
    assert early is not None and early.status == "ringing"
    assert before - timedelta(seconds=1) <= early.started_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert early.started_at.tzinfo is not None
    await store.start_call(CallRecord("CA1", T0, stream_sid="MZ1", caller="+15550100001", pipeline="p.yaml"))
    merged = await store.get_call("CA1")
    assert merged == CallRecord("CA1", T0, stream_sid="MZ1", caller="+15550100001", pipeline="p.yaml",
                                status="ringing")  # the record's defaults did not overwrite what was known


async def test_outbound_call_created_when_dialling_keeps_its_direction(store: CallStore) -> None:
    await store.start_call(CallRecord("CA1", T0, caller="+15550100999", callee="+15550100001",
                                      direction="outbound", status="ringing", parameters={"campaign": "x"}))
    await store.start_call(CallRecord("CA1", T0 + timedelta(seconds=9), stream_sid="MZ1", status="in_progress",
                                      pipeline="p.yaml"))
    got = await store.get_call("CA1")
    assert got == CallRecord("CA1", T0 + timedelta(seconds=9), stream_sid="MZ1", caller="+15550100999",
                             callee="+15550100001", direction="outbound", pipeline="p.yaml",
                             status="ringing", parameters={"campaign": "x"})


# --------------------------------------------------------------------------- turns


async def test_fifty_concurrent_turns_get_seq_1_to_50(store: CallStore) -> None:
    await store.start_call(CallRecord("CA1", T0))
    turns = [Turn("caller" if i % 2 else "agent", f"turn {i}", 100.0 * i, truncated=i % 5 == 0,
                  heard_ms=None if i % 2 else 40.5 * i, seq=999) for i in range(50)]
    seqs = await asyncio.gather(*(store.add_turn("CA1", turn) for turn in turns))
    assert sorted(seqs) == list(range(1, 51))
    transcript = await store.transcript("CA1")
    assert [turn.seq for turn in transcript] == list(range(1, 51))
    by_seq = dict(zip(seqs, turns, strict=True))
    for got in transcript:  # each stored turn is the one whose add_turn returned that seq
        sent = by_seq[got.seq]
        assert (got.speaker, got.text, got.started_ms, got.truncated, got.heard_ms) == (
            sent.speaker, sent.text, sent.started_ms, sent.truncated, sent.heard_ms)


async def test_two_stores_appending_to_one_call_never_collide(storage_url: str) -> None:
    """Two engines on one database behave like two worker processes."""
    a, b = CallStore(storage_url), CallStore(storage_url)
    try:
        await asyncio.gather(a.migrate(), b.migrate())
        await a.start_call(CallRecord("CA1", T0))
        seqs = await asyncio.gather(*(s.add_turn("CA1", Turn("caller", f"{i}", i)) for i in range(20)
                                      for s in (a, b)))
        assert sorted(seqs) == list(range(1, 41))
        assert [turn.seq for turn in await b.transcript("CA1")] == list(range(1, 41))
    finally:
        await a.close()
        await b.close()


async def test_seq_counts_per_call_and_a_turn_creates_a_missing_call(store: CallStore) -> None:
    assert await store.add_turn("CA1", Turn("caller", "a", 1.0)) == 1
    assert await store.add_turn("CA2", Turn("caller", "x", 1.0)) == 1
    assert await store.add_turn("CA1", Turn("agent", "b", 2.0)) == 2
    assert [(t.seq, t.text) for t in await store.transcript("CA1")] == [(1, "a"), (2, "b")]
    assert [(t.seq, t.text) for t in await store.transcript("CA2")] == [(1, "x")]
    assert await store.transcript("CA-none") == []
    created = await store.get_call("CA2")
    assert created is not None and created.started_at.tzinfo is not None


# --------------------------------------------------------------------------- queries


async def test_recent_calls_newest_first_limited_and_filtered(store: CallStore) -> None:
    callers = ["+1A", "+1B", "+1A", "+1C", "+1A"]
    for i, caller in enumerate(callers):  # inserted out of time order on purpose
        await store.start_call(CallRecord(f"CA{i}", T0 + timedelta(minutes=(i * 3) % 5), caller=caller))
    await store.start_call(CallRecord("CAout", T0 + timedelta(minutes=10), caller="+1OURS", callee="+1A",
                                      direction="outbound"))
    await store.start_call(CallRecord("CAin", T0 + timedelta(minutes=11), caller="+1C", callee="+1A"))
    everything = [r.call_sid for r in await store.recent_calls()]
    assert everything == ["CAin", "CAout", "CA3", "CA1", "CA4", "CA2", "CA0"]  # minutes 11, 10, 4, 3, 2, 1, 0
    assert [r.call_sid for r in await store.recent_calls(limit=2)] == ["CAin", "CAout"]
    assert [r.call_sid for r in await store.recent_calls(caller="+1A")] == ["CAout", "CA4", "CA2", "CA0"]
    assert [r.call_sid for r in await store.recent_calls(limit=1, caller="+1B")] == ["CA1"]
    assert await store.recent_calls(caller="+1NOBODY") == []


async def test_caller_history_skips_silent_and_excluded_calls(store: CallStore) -> None:
    async def call(sid: str, minute: int, caller: str, *texts: str) -> None:
        await store.start_call(CallRecord(sid, T0 + timedelta(minutes=minute), caller=caller))
        for i, said in enumerate(texts):
            await store.add_turn(sid, Turn("caller" if i % 2 == 0 else "agent", said, 1000.0 * i))

    await call("CA1", 1, "+1A", "hi", "hello, how can I help?")
    await call("CA2", 2, "+1A")  # hung up before anyone spoke
    await call("CA3", 3, "+1A", "it's me again")
    await call("CA4", 4, "+1A", "this is the current call")
    await call("CA5", 5, "+1B", "someone else")
    history = await store.caller_history("+1A", calls=3, exclude="CA4")
    assert [(record.call_sid, [t.text for t in turns]) for record, turns in history] == [
        ("CA3", ["it's me again"]), ("CA1", ["hi", "hello, how can I help?"])]
    assert history[1][1][1].speaker == "agent" and history[1][1][1].seq == 2
    assert [r.call_sid for r, _ in await store.caller_history("+1A", calls=2)] == ["CA4", "CA3"]
    assert [r.call_sid for r, _ in await store.caller_history("+1A", calls=1, exclude="CA4")] == ["CA3"]
    assert await store.caller_history("", calls=3) == []
    assert await store.caller_history("+1NOBODY") == []


async def test_forget_removes_that_number_only_and_returns_recordings(store: CallStore) -> None:
    await store.start_call(CallRecord("CA1", T0, caller="+1A", recording_path="rec/CA1.wav"))
    await store.start_call(CallRecord("CA2", T0, caller="+1A"))  # no recording
    await store.start_call(CallRecord("CA3", T0, caller="+1OURS", callee="+1A", direction="outbound",
                                      recording_path="rec/CA3.wav"))
    await store.start_call(CallRecord("CA4", T0, caller="+1B", callee="+1A", recording_path="rec/CA4.wav"))
    await store.start_call(CallRecord("CA5", T0, caller="", recording_path="rec/CA5.wav"))  # withheld number
    for sid in ("CA1", "CA2", "CA3", "CA4", "CA5"):
        await store.add_turn(sid, Turn("caller", f"said in {sid}", 0.0))
    assert sorted(await store.forget("+1A")) == ["rec/CA1.wav", "rec/CA3.wav"]
    for sid in ("CA1", "CA2", "CA3"):
        assert await store.get_call(sid) is None
        assert await store.transcript(sid) == []
    for sid in ("CA4", "CA5"):  # +1A was only the number called (CA4), or not involved at all
        assert await store.get_call(sid) is not None
        assert [t.text for t in await store.transcript(sid)] == [f"said in {sid}"]
    assert await store.forget("") == []
    assert await store.get_call("CA5") is not None
    assert await store.forget("+1A") == []


# --------------------------------------------------------------------------- durability, URLs


def test_turns_survive_the_worker_being_killed(storage_url: str) -> None:
    code = """
        import asyncio, os, signal, sys
        from datetime import UTC, datetime
        from agent_voice_bridge.storage import CallRecord, CallStore, Turn
        async def main():
            store = CallStore(sys.argv[1])
            await store.migrate()
            await store.start_call(CallRecord("CAkill", datetime.now(UTC), caller="+1A"))
            for i in range(3):
                await store.add_turn("CAkill", Turn("caller", f"line {i}", 10.0 * i))
            print("written", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no close(), no shutdown: a crash mid-call
        asyncio.run(main())
    """
    proc = run_python(code, storage_url)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -9, err
    assert out == "written\n"

    async def read() -> tuple[CallRecord | None, list[Turn]]:
        s = CallStore(storage_url)
        try:
            return await s.get_call("CAkill"), await s.transcript("CAkill")
        finally:
            await s.close()

    record, turns = asyncio.run(read())
    assert record is not None and record.caller == "+1A" and record.outcome is None
    assert [(t.seq, t.text) for t in turns] == [(1, "line 0"), (2, "line 1"), (3, "line 2")]


@pytest.mark.parametrize("url", [
    "mysql://admin:s3cr3t-pw@db.example/calls",
    "postgresql+psycopg2://admin:s3cr3t-pw@db.example/calls",
    "postgresql://admin:s3cr3t-pw@db.example:notaport/calls",
    "postgresql://admin:s3cr3t-pw@db.example",
    "postgresql://admin:s3cr3t-pw@with@at@db.example:x/calls",
    "admin:s3cr3t-pw@db.example/calls",
    "sqlite://",
    "",
])
def test_a_bad_url_is_refused_without_echoing_the_password(url: str) -> None:
    with pytest.raises(ValueError, match="call-store URL") as caught:
        CallStore(url)
    shown = "".join(traceback.format_exception(caught.value))
    assert "s3cr3t" not in shown
    assert "sqlite:///" in str(caught.value)  # says what would work


async def test_good_urls_map_to_the_async_drivers_and_hide_the_password(tmp_path: Path) -> None:
    cases = {
        "postgres://admin:s3cr3t-pw@db.example:5433/calls": "postgresql+asyncpg",
        "postgresql://admin:s3cr3t-pw@db.example/calls?sslmode=require": "postgresql+asyncpg",
        f"sqlite:///{tmp_path}/x.db": "sqlite+aiosqlite",
        "sqlite:///relative/x.db": "sqlite+aiosqlite",
    }
    for url, driver in cases.items():
        s = CallStore(url)  # connects lazily: nothing is reached here
        try:
            assert s._engine.url.drivername == driver
            assert "s3cr3t" not in s.url_for_display
            assert make_url(s.url_for_display).database == make_url(url).database
        finally:
            await s.close()
    s = CallStore("postgresql://admin:s3cr3t-pw@db.example/calls?sslmode=require")
    assert s._engine.url.query == {"ssl": "require"} and "***" in s.url_for_display
    await s.close()


async def test_in_memory_sqlite_handles_concurrent_calls() -> None:
    s = CallStore("sqlite:///:memory:")
    try:
        await s.migrate()
        await s.start_call(CallRecord("CA1", T0, caller="+1A"))
        seqs = await asyncio.gather(*(s.add_turn(f"CA{i % 2 + 1}", Turn("caller", str(i), i)) for i in range(20)),
                                    *(s.get_call("CA1") for _ in range(5)))
        assert sorted(seqs[:20]) == sorted(list(range(1, 11)) * 2)
        assert [t.seq for t in await s.transcript("CA2")] == list(range(1, 11))
    finally:
        await s.close()


def test_relative_sqlite_path_is_beside_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    async def run() -> None:
        s = CallStore("sqlite:///data/voice-bridge.db")
        await s.migrate()
        await s.close()

    asyncio.run(run())
    assert (tmp_path / "data" / "voice-bridge.db").is_file()
    assert os.listdir(tmp_path) == ["data"]
