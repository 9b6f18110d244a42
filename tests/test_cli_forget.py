"""``voice-bridge forget`` and ``calls --from``: one number parser, honest counts, a non-zero exit on a miss.

Why: ``forget "+1 (555) 000-1111"`` used to say the caller was gone while their calls stayed, and ``calls
--from 15550001111`` silently found nothing. Deleting a person's data is the one command that must not
claim what it did not do.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from agent_voice_bridge.storage import CallRecord, CallStore, Turn
from agent_voice_bridge.storage.records import Message
from conftest import ECHO_YAML, run_cli

CALLER = "+15550001111"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def config_with_two_calls(tmp_path: Path) -> Path:
    """An echo line whose store holds two calls from CALLER (turns, a voicemail, a recording) and one from another."""
    url = f"sqlite:///{tmp_path}/calls.db"
    recording = tmp_path / "CA1.wav"
    recording.write_bytes(b"RIFF")

    async def fill() -> None:
        store = CallStore(url)
        await store.migrate()
        await store.start_call(CallRecord("CA1", T0, caller=CALLER, recording_path=str(recording)))
        await store.start_call(CallRecord("CA2", T0, caller=CALLER))
        await store.start_call(CallRecord("CA3", T0, caller="+15550009999"))
        for sid in ("CA1", "CA2", "CA3"):
            await store.add_turn(sid, Turn("caller", f"said in {sid}", 0.0))
        await store.add_turn("CA1", Turn("agent", "hello", 500.0))
        await store.add_message("CA2", Message(T0, 1000.0, str(tmp_path / "missing.wav"), "silence"))
        await store.close()

    asyncio.run(fill())
    config = tmp_path / "line.yaml"
    config.write_text(ECHO_YAML + f"storage: {{url: '{url}'}}\n")
    return config


async def test_forget_accepts_a_number_written_with_spaces_and_says_what_it_deleted(tmp_path: Path,
                                                                                    capsys) -> None:
    config = await asyncio.to_thread(config_with_two_calls, tmp_path)
    capsys.readouterr()
    assert await run_cli("forget", "+1 (555) 000-1111", "-c", str(config)) == 0
    out = capsys.readouterr().out
    assert "forgot +15550001111: deleted 2 call(s), 3 transcript turn(s), 1 voicemail message(s)" in out, out
    assert not (tmp_path / "CA1.wav").exists()
    assert await run_cli("calls", "-c", str(config)) == 0
    listing = capsys.readouterr().out
    assert "CA1" not in listing and "CA2" not in listing and "CA3" in listing


async def test_forget_with_nothing_to_forget_exits_non_zero(tmp_path: Path, capsys) -> None:
    config = await asyncio.to_thread(config_with_two_calls, tmp_path)
    capsys.readouterr()
    assert await run_cli("forget", "+15557654321", "-c", str(config)) == 1
    assert "no calls with +15557654321" in capsys.readouterr().err
    assert await run_cli("forget", "15550001111", "-c", str(config)) == 2, "not a number: said, not searched"
    err = capsys.readouterr().err
    assert "'15550001111' is not a phone number" in err and err.count("\n") == 1
    assert await run_cli("calls", "-c", str(config), "--from", CALLER) == 0
    assert capsys.readouterr().out.count("\n") == 3, "both of CALLER's calls are still there"


async def test_calls_from_uses_the_same_parser(tmp_path: Path, capsys) -> None:
    config = await asyncio.to_thread(config_with_two_calls, tmp_path)
    capsys.readouterr()
    assert await run_cli("calls", "-c", str(config), "--from", "+1 555-000-1111") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("+15550001111" in line for line in lines[1:]), lines
    assert await run_cli("calls", "-c", str(config), "--from", "15550001111") == 2
    assert "not a phone number" in capsys.readouterr().err
