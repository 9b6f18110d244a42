"""A CallSid comes from outside and names the call's files: only ``CA`` + 32 hex gets in.

``../../x`` or an absolute path as a callSid used to write the call's recording
outside the recordings folder. Webhooks now answer 400, a stream's ``start`` is
closed with 1008, and a file is never named after anything but a checked SID.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ECHO_YAML, LiveServer, speech

from agent_voice_bridge.calls.records import open_recorder
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitQuiet, run_call

GOOD_SID = "CA" + "0123456789abcdef" * 2


def recording_yaml(recordings: Path) -> str:
    doc = yaml.safe_load(ECHO_YAML)
    doc["storage"] = {"record": True, "recordings": str(recordings)}
    return yaml.safe_dump(doc, sort_keys=False)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix == ".wav")


def hostile_sids(tmp_path: Path) -> list[str]:
    return ["../../escaped", str(tmp_path / "absolute"), "CA" + "0" * 31 + "/", "", "CA" + "g" * 32]


def test_only_twilio_call_sids_are_call_sids(tmp_path: Path) -> None:
    from agent_voice_bridge.sids import is_call_sid

    assert is_call_sid(GOOD_SID) and is_call_sid(GOOD_SID.upper().replace("CA", "CA", 1))
    assert not any(is_call_sid(sid) for sid in hostile_sids(tmp_path) + [GOOD_SID + "\n", None, 42])


@pytest.mark.parametrize("path", ["/incoming", "/outbound", "/status"])
async def test_webhooks_refuse_a_malformed_call_sid_with_400(tmp_path: Path, path: str) -> None:
    with LiveServer(recording_yaml(tmp_path / "a" / "b" / "rec"), env={}) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
            for sid in hostile_sids(tmp_path):
                answer = await http.post(path, data={"CallSid": sid, "From": "+15550100001", "To": "+15550100002",
                                                     "CallStatus": "completed"})
                assert answer.status_code == 400, (sid, answer.status_code, answer.text)
                assert "CallSid" in answer.json()["detail"]
            good = await http.post(path, data={"CallSid": GOOD_SID, "From": "+15550100001", "To": "+15550100002",
                                               "CallStatus": "completed"})
        assert good.status_code in (200, 204), good.text


async def test_a_stream_start_with_a_path_as_call_sid_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    recordings = tmp_path / "a" / "b" / "rec"
    with LiveServer(recording_yaml(recordings), env={}) as server:
        for sid in ["../../escaped", str(tmp_path / "absolute")]:
            result = await run_call(server.ws_url, [Pause(0.2), Say(speech("hello-world")), WaitQuiet(idle=0.5)],
                                    call_sid=sid)
            assert result.close_code == 1008, (sid, result.close_code)
        assert server.calls.refused == 2
        good = await run_call(server.ws_url, [Pause(0.2), Say(speech("hello-world")), WaitQuiet(idle=0.5)],
                              call_sid=GOOD_SID)
        server.wait_idle(finished=1)
    assert good.close_code == 1000
    assert files_under(tmp_path) == [recordings / f"{GOOD_SID}.wav"]


def test_the_recorder_never_names_a_file_after_a_malformed_sid(tmp_path: Path) -> None:
    recordings = tmp_path / "x" / "rec"
    for sid in ["../escaped", str(tmp_path / "absolute")]:
        assert open_recorder(str(recordings), CallInfo(call_sid=sid, stream_sid="MZ" + "0" * 32)) is None
    assert files_under(tmp_path) == []
