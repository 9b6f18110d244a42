"""When the AI cannot answer, the caller hears why and the call ends cleanly; a Gemini goAway resumes."""

from __future__ import annotations

import numpy as np

from agent_voice_bridge.assets import spoken
from agent_voice_bridge.audio import mulaw
from agent_voice_bridge.transports.simulated_caller import CallResult, Pause, Say, WaitQuiet, run_call
from conftest import LiveServer, speech
from fakes.gemini_live import FakeGeminiLive, GeminiScript
from fakes.openai_realtime import FakeOpenAIRealtime
from test_gemini_call import chain_yaml as gemini_chain
from test_openai_call import passthrough_chain as openai_chain

APOLOGY = mulaw.decode_array(spoken("apology")).astype(np.float64)


def heard_apology(result: CallResult) -> bool:
    """The apology, sample for sample (μ-law passes through the simulated Twilio unchanged), somewhere in what was heard."""
    heard = result.heard.astype(np.float64)
    probe = APOLOGY[4000:12000]  # one second from inside the recording
    for start in np.flatnonzero(np.abs(heard) > 0)[:1]:
        window = heard[start : start + len(APOLOGY) + 8000]
        corr = np.correlate(window, probe, mode="valid")
        best = int(np.argmax(corr))
        segment = window[best : best + len(probe)]
        return bool(np.allclose(segment, probe, atol=1))
    return False


def assert_apologised_and_hung_up(result: CallResult) -> None:
    print(result.timeline())
    assert heard_apology(result), "the caller heard the committed apology"
    assert result.events_of("closed")[-1].detail.endswith("by server"), "the bridge ended the call"
    assert result.close_code == 1000


async def test_gemini_refusing_the_key_gives_the_apology() -> None:
    async with FakeGeminiLive(script=GeminiScript(fail="refuse")) as fake:
        with LiveServer(gemini_chain(fake, turn_detection="model", vad=False)) as server:
            result = await run_call(server.ws_url, [Pause(0.5), Say(speech("vm-goodbye")), WaitQuiet(idle=1.0)])
            server.wait_idle(1)
    assert_apologised_and_hung_up(result)


async def test_openai_refusing_the_key_gives_the_apology() -> None:
    async with FakeOpenAIRealtime(api_key="the-right-key") as fake:
        with LiveServer(openai_chain(fake)) as server:
            result = await run_call(server.ws_url, [Pause(0.5), Say(speech("vm-goodbye")), WaitQuiet(idle=1.0)])
    assert_apologised_and_hung_up(result)


async def test_openai_dying_mid_reply_gives_the_apology() -> None:
    async with FakeOpenAIRealtime(fail="drop_mid_response") as fake:
        with LiveServer(openai_chain(fake)) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=1.0)])
    assert result.events_of("audio_start"), "part of the reply was heard before the drop"
    assert_apologised_and_hung_up(result)


async def test_unreachable_backend_gives_the_apology() -> None:
    yaml_text = ("pipeline:\n  - twilio.input\n  - openai.realtime: {api_key: k, audio_format: pcmu,"
                 " base_url: 'ws://127.0.0.1:9/v1/realtime'}\n  - twilio.output\n")
    with LiveServer(yaml_text) as server:
        result = await run_call(server.ws_url, [Pause(0.5), WaitQuiet(idle=1.0)])
    assert_apologised_and_hung_up(result)


async def test_gemini_go_away_resumes_the_session_and_the_conversation() -> None:
    async with FakeGeminiLive(script=GeminiScript(go_away_after_turns=1, go_away_time_left=0.3)) as fake:
        with LiveServer(gemini_chain(fake, turn_detection="model", vad=False)) as server:
            steps = [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=1.5), Say(speech("hello-world")),
                     WaitQuiet(idle=1.0)]
            result = await run_call(server.ws_url, steps)
    print(result.timeline())
    assert len(fake.sessions) >= 2, "goAway, then a new session"
    assert fake.sessions[1].resumed, "the second session resumed the first with its handle"
    assert fake.sessions[1].turns_at_start == 1, "the conversation kept its first turn"
    latencies = result.reply_latencies()
    assert len(latencies) == 2 and max(latencies) <= 2.0, latencies
    assert not result.events_of("closed")[-1].detail.endswith("by server")


async def test_openai_session_end_comes_from_expires_at_with_the_margin() -> None:
    # The session says it lasts 60 s; the margin is 57.5 s, so the goodbye is due ~2–3 s in (expires_at is whole
    # seconds). The bridge's old fixed 30-minute belief would never end this call.
    async with FakeOpenAIRealtime(session_seconds=60) as fake:
        yaml_text = openai_chain(fake, session_end_margin_secs="57.5")
        with LiveServer(yaml_text) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=8.0, timeout=20)])
    print(result.timeline())
    goodbye = mulaw.decode_array(spoken("goodbye_time_limit")).astype(np.float64)
    heard = result.heard.astype(np.float64)
    probe = goodbye[4000:12000]
    corr = np.correlate(heard, probe, mode="valid")
    at = int(np.argmax(corr))
    assert np.allclose(heard[at : at + len(probe)], probe, atol=1), "the time-limit goodbye was played"
    assert 1.0 <= at / 8000 <= 4.5, "about two seconds in (expires_at minus the margin)"
    assert result.events_of("closed")[-1].detail.endswith("by server")


async def test_gemini_asks_for_context_compression() -> None:
    async with FakeGeminiLive(script=GeminiScript()) as fake:
        with LiveServer(gemini_chain(fake, turn_detection="model", vad=False)) as server:
            await run_call(server.ws_url, [Pause(0.5)])
        session = await fake.session(0)
    assert "contextWindowCompression" in session.setup, "unbounded session length"
