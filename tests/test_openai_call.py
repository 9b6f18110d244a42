"""openai.realtime end to end: real server, simulated caller, pipecat's service against the fake (GA events)."""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import serve

from agent_voice_bridge.pipelines.chain import build_chain
from agent_voice_bridge.pipelines.loader import load_file
from agent_voice_bridge.services import early
from agent_voice_bridge.services.backend import CLOSE_TIMEOUT_SECS
from agent_voice_bridge.services.openai_realtime import OpenAIRealtime, OpenAIRealtimeParams
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard, WaitQuiet, run_call
from conftest import ROOT, LiveServer, seconds_to_close_a_stuck_socket, speech
from fakes.openai_realtime import FakeOpenAIRealtime


def stage(fake: FakeOpenAIRealtime, **extra: str) -> list[str]:
    lines = ["  - openai.realtime:", "      api_key: test-key", f"      base_url: {fake.url}", "      voice: cedar",
             "      instructions: 'You are answering {callee} for {caller}.'"]
    lines += [f"      {k}: {v}" for k, v in extra.items()]
    return lines


def pcm_chain(fake: FakeOpenAIRealtime, *, vad: bool = False, **extra: str) -> str:
    head = ["pipeline:", "  - twilio.input", "  - mulaw.decode", "  - resample: {rate: 24000}"]
    if vad:
        head = ["pipeline:", "  - twilio.input", "  - mulaw.decode", "  - resample: {rate: 16000}",
                "  - vad.interrupter: {start_secs: 0.15, stop_secs: 0.5}", "  - resample: {rate: 24000}"]
    tail = ["  - resample: {rate: 8000}", "  - mulaw.encode", "  - twilio.output"]
    return "\n".join(head + stage(fake, **extra) + tail) + "\n"


def passthrough_chain(fake: FakeOpenAIRealtime, **extra: str) -> str:
    return "\n".join(["pipeline:", "  - twilio.input", *stage(fake, audio_format="pcmu", **extra),
                      "  - twilio.output"]) + "\n"


async def test_pcm_greeting_speech_and_reply() -> None:
    async with FakeOpenAIRealtime() as fake:
        with LiveServer(pcm_chain(fake, greeting="'Hi from the test line.'")) as server:
            result = await run_call(server.http_url, [WaitHeard(timeout=10), WaitQuiet(idle=0.6),
                                                      Say(speech("hello-world")), WaitQuiet(idle=0.8)],
                                    from_number="+15551112222", to_number="+15553334444")
        print(result.timeline())
        session = fake.sessions[0]
        assert session.config["instructions"] == "You are answering +15553334444 for +15551112222."
        assert session.config["audio"]["output"]["voice"] == "cedar"
        assert session.input_format == {"type": "audio/pcm", "rate": 24000}
        assert result.events_of("audio_start")[0].t < result.utterances[0][0], "the greeting played first"
        assert len(session.audio_in) >= 24000 * 2, "at least a second of the caller's 24 kHz audio"
        assert result.reply_latencies()[0] <= 3.0  # no reply (nan) fails; a busy box's headroom
        assert not session.errors


async def test_pcmu_passthrough_needs_no_codec_and_truncates_to_what_was_heard() -> None:
    async with FakeOpenAIRealtime() as fake:
        with LiveServer(passthrough_chain(fake)) as server:
            steps = [Pause(0.3), Say(speech("vm-goodbye")), WaitHeard(after=0.6), Say(speech("all-circuits-busy-now")),
                     WaitQuiet(idle=0.8)]
            result = await run_call(server.http_url, steps)
        print(result.timeline())
        session = fake.sessions[0]
        assert session.input_format["type"] == session.output_format["type"] == "audio/pcmu"
        assert len(session.audio_in_raw) >= 8000 * 2, "Twilio's μ-law bytes went through unchanged"
        assert len(result.clears) == 1 and result.stale_media_after_clear == 0
        truncation, = session.truncations
        reply_start = next(e.t for e in result.events_of("audio_start") if e.t < result.clears[0])
        heard_ms = (result.clears[0] - reply_start) * 1000
        print(f"truncated at {truncation.audio_end_ms} ms; the simulated Twilio clock played {heard_ms:.0f} ms")
        assert abs(truncation.audio_end_ms - heard_ms) <= 40, (truncation, heard_ms)
        assert not session.truncate_errors and not session.errors


async def test_local_turn_detection_commits_and_asks_for_the_reply() -> None:
    async with FakeOpenAIRealtime() as fake:
        with LiveServer(pcm_chain(fake, vad=True, turn_detection="local")) as server:
            result = await run_call(server.http_url, [Pause(0.3), Say(speech("one-moment-please")), WaitQuiet(idle=0.8)])
        session = fake.sessions[0]
        assert session.config["audio"]["input"]["turn_detection"] is None
        kinds = [e["type"] for e in session.events]
        assert "input_audio_buffer.commit" in kinds and "response.create" in kinds
        assert result.reply_latencies()[0] <= 3.0  # no reply (nan) fails; a busy box's headroom


def test_ready_chains_pass_check() -> None:
    chain = build_chain(load_file(ROOT / "pipelines" / "openai.yaml", {"OPENAI_API_KEY": "k"}))
    assert [s.name for s in chain.stages] == ["twilio.input", "openai.realtime", "twilio.output"]
    assert str(chain.stages[1].audio_in) == "8 kHz μ-law"


async def test_the_model_connection_opens_before_the_stream_starts() -> None:
    import httpx

    from agent_voice_bridge.transports.simulated_caller import parse_twiml

    async with FakeOpenAIRealtime() as fake:
        with LiveServer(passthrough_chain(fake, greeting="'Hello.'")) as server:
            form = {"CallSid": "CA" + "e1" * 16, "From": "+15550001111", "To": "+15550002222"}
            async with httpx.AsyncClient() as http:
                twiml = (await http.post(server.http_url, data=form)).text
            # /incoming alone opened the model's connection: no media stream exists yet.
            await fake.wait_for_session(0)
            stream_url, parameters = parse_twiml(twiml)
            result = await run_call(stream_url, [WaitHeard(timeout=10), WaitQuiet(idle=0.5)],
                                    call_sid="CA" + "e1" * 16, custom_parameters=parameters)
        assert len(fake.handshakes) == 1, "the call used the early connection"
        assert fake.sessions[0].events, "and spoke over it"
    assert result.events_of("audio_start")[0].t < 1.0, "the greeting came without a connection wait"


async def test_a_backend_that_stopped_reading_holds_a_call_s_teardown_for_at_most_the_close_timeout():
    """A finished call closes its model socket. A backend that has stopped reading (its handler busy, the
    socket's queue full, so the close frame is never read) must not hold the call's teardown for
    websockets' default 10 s."""
    released = asyncio.Event()

    async def never_reads(ws) -> None:
        await released.wait()  # reads nothing

    async with serve(never_reads, "127.0.0.1", 0, max_queue=4, close_timeout=0.5) as server:
        port = server.sockets[0].getsockname()[1]
        params = OpenAIRealtimeParams(api_key="sk-test", base_url=f"ws://127.0.0.1:{port}/v1/realtime")
        OpenAIRealtime.connect_early(params, CallInfo(call_sid="CA-slow-close", stream_sid="MZ-slow-close"))
        ws = await early.claim("CA-slow-close", "openai.realtime")
        assert ws is not None
        try:
            took = await seconds_to_close_a_stuck_socket(ws, ws.close)
        finally:
            released.set()
    print(f"close took {took:.2f} s (close timeout {CLOSE_TIMEOUT_SECS} s)")
    assert took < CLOSE_TIMEOUT_SECS + 1.0
