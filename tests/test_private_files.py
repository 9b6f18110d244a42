"""Recordings, call records and the limits store are the server user's alone, and never in a shared /tmp.

With the usual umask 022 they were 0644 (any local user could play a caller's voice
or read their number), and the limits store sat in /tmp under a name anyone could
create first.
"""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_voice_bridge.security.limits import open_store
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.call_recorder import CallRecorder


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The common default: files 0644, directories 0755, unless the code asks for less."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_recording_is_0600_in_a_0700_folder(tmp_path: Path) -> None:
    recorder = CallRecorder(tmp_path / "recordings" / "day" / ("CA" + "0" * 32 + ".wav"))
    recorder.close()
    assert mode(recorder.path) == 0o600
    assert mode(tmp_path / "recordings") == mode(tmp_path / "recordings" / "day") == 0o700


def test_the_call_records_database_and_its_wal_are_0600(tmp_path: Path) -> None:
    database = tmp_path / "state" / "calls.db"
    store = CallStore(f"sqlite:///{database}")

    async def use() -> None:
        await store.migrate()
        await store.recent_calls(1)

    asyncio.run(use())
    files = [p for p in database.parent.iterdir() if p.name.startswith("calls.db") and "lock" not in p.name]
    assert {p.name for p in files} >= {"calls.db", "calls.db-wal"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    asyncio.run(store.close())


def test_the_default_limits_store_lives_in_the_state_directory_privately(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    port = 47000 + os.getpid() % 1000
    shared = Path(tempfile.gettempdir()) / f"voice-bridge-{port}.sqlite"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    open_store("sqlite", port)
    store_file = tmp_path / "state" / f"voice-bridge-limits-{port}.sqlite"
    assert not shared.exists(), "nothing in the shared temp dir"
    assert store_file.exists() and mode(store_file) == 0o600
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.chdir(tmp_path)  # without systemd: the working directory, beside voice-bridge.db
    open_store("sqlite", port)
    assert mode(tmp_path / f"voice-bridge-limits-{port}.sqlite") == 0o600


def test_a_voicemail_message_is_0600(tmp_path: Path) -> None:
    from agent_voice_bridge.processors.voicemail import MessageFile

    message = MessageFile(tmp_path / "messages" / ("CA" + "1" * 32 + "-message.wav"))
    message.write(b"\0\0" * 800)
    assert message.close(drop_held=True) == 100
    assert mode(message.path) == 0o600 and mode(tmp_path / "messages") == 0o700


def test_the_service_unit_sets_a_private_umask() -> None:
    unit = (Path(__file__).resolve().parents[1] / "deploy" / "voice-bridge.service").read_text()
    assert "\nUMask=0077\n" in unit
