"""openai.realtime against what the SDK defines: current models, a rejected configuration, audio before the format."""

from __future__ import annotations

import os
import subprocess
import sys

from agent_voice_bridge.pipelines.chain import build_chain
from agent_voice_bridge.pipelines.loader import load_default, load_file
from agent_voice_bridge.services import model_deprecations
from agent_voice_bridge.services.openai_realtime import OpenAIRealtimeParams
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitQuiet, run_call
from conftest import ROOT, LiveServer, speech
from fakes.openai_realtime import FakeOpenAIRealtime
from test_backend_resilience import assert_apologised_and_hung_up
from test_openai_call import passthrough_chain, pcm_chain


def test_the_sdk_s_deprecation_notes_are_read() -> None:
    """The dates come from the installed SDK's own field docs (openai 3.63: gpt-realtime shuts down 2027-01-20)."""
    assert model_deprecations.realtime_models()["gpt-realtime"] == "2027-01-20"
    assert model_deprecations.transcription_models()["gpt-4o-mini-transcribe"] == "2027-02-26"
    assert "gpt-realtime-2.1" not in model_deprecations.realtime_models()


def test_default_models_are_ones_the_sdk_lists_as_current() -> None:
    defaults = OpenAIRealtimeParams(api_key="k")
    assert defaults.model not in model_deprecations.realtime_models()
    assert defaults.transcribe not in model_deprecations.transcription_models()
    for loaded in (load_file(ROOT / "pipelines" / "openai.yaml", {"OPENAI_API_KEY": "k"}),
                   load_default("openai.yaml", {"OPENAI_API_KEY": "k"})):
        chain = build_chain(loaded)
        assert chain.warnings() == [], loaded.path
        stage = next(s for s in chain.stages if s.name == "openai.realtime")
        assert stage.params.model not in model_deprecations.realtime_models(), loaded.path


def test_check_warns_about_a_deprecated_model_with_its_shutdown_date(tmp_path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("pipeline:\n  - twilio.input\n  - openai.realtime:\n      api_key: k\n      audio_format: pcmu\n"
                    "      model: gpt-realtime\n      transcribe: whisper-1\n  - twilio.output\n")
    done = subprocess.run([sys.executable, "-m", "agent_voice_bridge.cli", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr  # a warning, not an error: the model still answers until then
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, done.stderr
    assert f"{path}:3: stage 2 (openai.realtime): model: 'gpt-realtime'" in warnings[0]
    assert "2027-01-20" in warnings[0] and "'gpt-realtime-2.1'" in warnings[0]
    assert "transcribe: 'whisper-1'" in warnings[1] and "2027-02-26" in warnings[1]


async def test_a_rejected_session_update_ends_the_ai_leg_with_the_apology_and_the_reason() -> None:
    """The server keeps its defaults after a rejected update (24 kHz PCM, no instructions): the call must not
    go on as if configured. The fake rejects the voice with ``invalid_value``, an error code that is harmless
    for other requests."""
    async with FakeOpenAIRealtime() as fake:
        with LiveServer(passthrough_chain(fake).replace("voice: cedar", "voice: not-a-voice")) as server:
            result = await run_call(server.ws_url, [Pause(0.5), Say(speech("vm-goodbye")), WaitQuiet(idle=1.0)])
            server.wait_idle(1)
            record = server.db(CallStore.get_call, result.call_sid)
        error, = fake.sessions[0].errors
        update, = fake.sessions[0].client_events("session.update")
    assert error["error"]["event_id"] == update["event_id"], "the error answered the bridge's session.update"
    assert_apologised_and_hung_up(result)
    assert record.outcome == "backend_failure"
    assert "session configuration rejected" in record.reason and "not-a-voice" in record.reason, record.reason


async def test_caller_audio_waits_for_the_session_s_format() -> None:
    """The server is slow to announce the session; the caller talks from the first frame. Every byte must be read
    as μ-law (the session's configured format), none as the default 24 kHz PCM, and none lost."""
    async with FakeOpenAIRealtime(created_delay=0.4) as fake:
        with LiveServer(passthrough_chain(fake)) as server:
            result = await run_call(server.ws_url, [Say(speech("vm-goodbye")), WaitQuiet(idle=1.0)])
        session = fake.sessions[0]
    print(result.timeline())
    assert session.append_formats and set(session.append_formats) == {"audio/pcmu"}, set(session.append_formats)
    spoken_until = result.utterances[0][1] * 8000  # the caller sends a frame every 20 ms from the start
    assert len(session.audio_in_raw) >= spoken_until - 8000 * 0.1, (len(session.audio_in_raw), spoken_until)
    assert result.reply_latencies(), "the caller was answered"


async def test_pcm_audio_held_for_the_session_is_sent_in_full() -> None:
    async with FakeOpenAIRealtime(created_delay=0.4) as fake:
        with LiveServer(pcm_chain(fake)) as server:
            result = await run_call(server.ws_url, [Say(speech("vm-goodbye")), WaitQuiet(idle=1.0)])
        session = fake.sessions[0]
    assert set(session.append_formats) == {"audio/pcm"}
    spoken_until = result.utterances[0][1] * 24000 * 2
    assert len(session.audio_in) >= spoken_until - 24000 * 2 * 0.1, (len(session.audio_in), spoken_until)
    assert result.reply_latencies(), "the caller was answered"
