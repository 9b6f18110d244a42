"""gemini.live end to end: real server, simulated caller, pipecat's service and google-genai against the fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import numpy as np
import pytest
from google.genai.types import LiveConnectConfig
from loguru import logger
from websockets.asyncio.server import serve

from agent_voice_bridge.pipelines.stage import StageContext
from agent_voice_bridge.services import early
from agent_voice_bridge.services.backend import CLOSE_TIMEOUT_SECS
from agent_voice_bridge.services.gemini_live import GeminiLive, GeminiLiveParams, _close_early
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard, WaitQuiet, run_call
from conftest import ROOT, LiveServer, seconds_to_close_a_stuck_socket, speech
from fakes.gemini_live import DEADLINE_REASON, FakeGeminiLive, GeminiScript, tone
from fakes.tls import loopback_tls
from stages import tools as user_tools


def chain_yaml(fake: FakeGeminiLive, *, turn_detection: str, vad: bool = True, greeting: str | None = None,
               tools: str | None = None) -> str:
    lines = [
        "pipeline:",
        "  - twilio.input",
        "  - mulaw.decode",
        "  - resample: {rate: 16000}",
    ]
    if vad:
        lines.append("  - vad.interrupter: {start_secs: 0.15, stop_secs: 0.5}")
    lines += [
        "  - gemini.live:",
        "      api_key: test-key",
        f"      base_url: {fake.base_url}",
        "      api_version: v1beta",
        f"      ca_file: {fake.ca_path}",
        "      voice: Kore",
        "      instructions: 'Caller {caller} called {callee} about {topic}.'",
        f"      turn_detection: {turn_detection}",
    ]
    if greeting:
        lines.append(f"      greeting: '{greeting}'")
    if tools:
        lines.append(f"      tools: {tools}")
    lines += ["  - resample: {rate: 8000}", "  - mulaw.encode", "  - twilio.output"]
    return "\n".join(lines) + "\n"


def tone_level(pcm: np.ndarray) -> float:
    """Share of the heard energy at 440 Hz (the fake's reply tone)."""
    x = pcm.astype(np.float64)
    if not np.any(x):
        return 0.0
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 8000)
    band = (freqs > 420) & (freqs < 460)
    return float(spectrum[band].sum() / spectrum.sum())


async def test_greeting_first_then_speech_reaches_the_model_and_the_reply_the_caller() -> None:
    async with FakeGeminiLive(script=GeminiScript()) as fake:
        with LiveServer(chain_yaml(fake, turn_detection="local", greeting="Hi, you reached the test line.")) as server:
            result = await run_call(
                server.http_url,
                [WaitHeard(after=0.0, timeout=10), WaitQuiet(idle=0.6), Say(speech("hello-world")), WaitQuiet(idle=0.8)],
                from_number="+15550101010", to_number="+15550202020", custom_parameters={"topic": "billing"})
        print(result.timeline())
        # The session /incoming opened early lacked {topic} (only the stream carries it), so the call
        # opened its own: the last one.
        session = fake.sessions[-1]
        assert len(fake.sessions) == 2
        await fake.wait_for(lambda: fake.sessions[0].closed, 5, "the mismatched early session closed")
        assert session.voice == "Kore"
        system = str(session.setup.get("systemInstruction"))
        assert "Caller +15550101010 called +15550202020 about billing." in system
        assert session.automatic_activity_detection is False
        # The greeting was asked for before the caller said anything, and it played first.
        assert session.client_contents, "the greeting request"
        assert "you reached the test line" in str(session.client_contents[0])
        first_audio = result.events_of("audio_start")[0].t
        assert first_audio < result.utterances[0][0]
        # The caller's speech reached the model as 16 kHz PCM, inside activityStart/End.
        assert session.audio_rates == {16000}
        kinds = [a for a in session.activity]
        assert "activityStart" in kinds and "activityEnd" in kinds
        assert session.audio_ms() >= 800
        # And the model's reply reached the caller after they stopped.
        latency = result.reply_latencies()[0]
        assert latency <= 3.0, latency  # no reply (nan) fails; a busy box's headroom
        reply_start = int(result.events_of("audio_start")[-1].t * 8000)
        assert tone_level(result.heard[reply_start : reply_start + 8000]) > 0.5
        assert not session.protocol_errors


async def test_model_turn_detection_barge_in_clears_the_line() -> None:
    async with FakeGeminiLive(script=GeminiScript(reply_audio=None)) as fake:
        yaml_text = chain_yaml(fake, turn_detection="model", vad=False)
        with LiveServer(yaml_text) as server:
            steps = [Pause(0.3), Say(speech("vm-goodbye")), WaitHeard(after=0.4), Say(speech("all-circuits-busy-now")),
                     WaitQuiet(idle=0.8)]
            result = await run_call(server.http_url, steps, custom_parameters={"topic": "x"})
        print(result.timeline())
        session = fake.sessions[-1]
        assert session.automatic_activity_detection is not False
        assert any(r.interrupted for r in session.replies), "the fake saw the barge-in and interrupted"
        assert len(result.clears) == 1
        assert result.stale_media_after_clear == 0
        assert not session.protocol_errors


def test_ready_gemini_chain_passes_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_voice_bridge.pipelines.chain import build_chain
    from agent_voice_bridge.pipelines.loader import load_file

    chain = build_chain(load_file(ROOT / "pipelines" / "gemini.yaml", {"GEMINI_API_KEY": "k"}))
    gemini = next(s for s in chain.stages if s.name == "gemini.live")
    assert (str(gemini.audio_in), str(gemini.audio_out)) == ("16 kHz PCM16", "24 kHz PCM16")
    assert "api_key='***'" in gemini.describe()


async def test_the_live_session_opens_before_the_stream_starts() -> None:
    import httpx

    from agent_voice_bridge.transports.simulated_caller import parse_twiml

    async with FakeGeminiLive(script=GeminiScript()) as fake:
        yaml_text = chain_yaml(fake, turn_detection="model", vad=False, greeting="Hello early.")
        with LiveServer(yaml_text) as server:
            form = {"CallSid": "CA" + "e" * 32, "From": "+15550001111", "To": "+15550002222"}
            async with httpx.AsyncClient() as http:
                twiml = (await http.post(server.http_url, data=form)).text
            session = await fake.session(0)  # opened, with its setup, by /incoming alone
            assert "Caller +15550001111 called +15550002222" in str(session.setup.get("systemInstruction"))
            stream_url, parameters = parse_twiml(twiml)
            result = await run_call(stream_url, [WaitHeard(timeout=10), WaitQuiet(idle=0.5)],
                                    call_sid="CA" + "e" * 32, custom_parameters=parameters)
        assert len(fake.sessions) == 1, "the call used the early session"
        assert session.client_contents, "and asked for its greeting over it"
        assert not session.protocol_errors
    assert result.events_of("audio_start")[0].t < 1.0


@pytest.mark.parametrize("connection", ["early", "own"])
async def test_a_backend_that_stopped_reading_holds_a_call_s_teardown_for_at_most_the_close_timeout(connection: str):
    """As for OpenAI: google-genai opens the Live socket with websockets' default 10 s close timeout, and a
    backend that has stopped reading never reads the close frame. Both ways a call gets its session: the
    one opened early from /incoming, and the stage's own (pipecat's connect, nothing parked)."""
    released = asyncio.Event()
    tls = loopback_tls()

    async def setup_then_never_reads(ws) -> None:
        await ws.recv()  # the setup message
        await ws.send(json.dumps({"setupComplete": {}}))
        await released.wait()  # reads nothing more

    async with serve(setup_then_never_reads, "127.0.0.1", 0, ssl=tls.server, max_queue=4, close_timeout=0.5) as server:
        port = server.sockets[0].getsockname()[1]
        params = GeminiLiveParams(api_key="test-key", base_url=f"https://127.0.0.1:{port}", api_version="v1beta",
                                  ca_file=tls.ca_path)
        call = CallInfo(call_sid=f"CA-slow-close-{connection}", stream_sid="MZ-slow-close")
        try:
            if connection == "early":
                GeminiLive.connect_early(params, call)
                parked = await early.claim(call.call_sid, "gemini.live")
                assert parked is not None
                took = await seconds_to_close_a_stuck_socket(parked[1]._ws, lambda: _close_early(parked))
            else:
                service = GeminiLive.create(params, StageContext(audio_in=None, side="caller", call=call))
                opened = service._client.aio.live.connect(model=service._settings.model, config=LiveConnectConfig())
                session = await opened.__aenter__()
                took = await seconds_to_close_a_stuck_socket(session._ws,
                                                             lambda: opened.__aexit__(None, None, None))
        finally:
            released.set()
    print(f"{connection} session: close took {took:.2f} s (close timeout {CLOSE_TIMEOUT_SECS} s)")
    assert took < CLOSE_TIMEOUT_SECS + 1.0


# --------------------------------------------------------------------------- goAway, cancelled tool calls, multi-part turns


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log line (INFO and up) the server writes while the test runs."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


def heard_ms(heard: np.ndarray) -> float:
    """Milliseconds of the call in which the caller heard something (10 ms windows above the noise floor)."""
    usable = len(heard) - len(heard) % 80
    windows = heard[:usable].astype(np.float64).reshape(-1, 80)
    return float((np.sqrt((windows**2).mean(axis=1)) > 100).sum() * 10)


def caller_ms_after(result, t: float) -> float:
    """Milliseconds of audio the caller sent from monotonic time ``t`` on (its frames go out every 20 ms)."""
    first_frame = max(0, int(np.ceil((t - result.started_at) / 0.02)))
    return max(0.0, len(result.sent) / 8 - first_frame * 20)


async def go_away_call(fake: FakeGeminiLive):
    """A call in which the first reply is under way when the model announces the end of its session."""
    with LiveServer(chain_yaml(fake, turn_detection="model", vad=False)) as server:
        steps = [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=1.5), Say(speech("hello-world")),
                 WaitQuiet(idle=1.5)]
        result = await run_call(server.ws_url, steps)
        await asyncio.to_thread(server.wait_idle, 1)  # the record is written as the call ends
        record = await asyncio.to_thread(server.db, CallStore.get_call, result.call_sid)
    print(result.timeline())
    return result, record


async def test_go_away_mid_reply_switches_sessions_at_the_turn_end_without_loss(log_lines: list[str]) -> None:
    # Resuming takes the server 600 ms: 30 frames of caller audio arrive while the new session opens.
    script = GeminiScript(go_away_at_reply_ms=300, go_away_time_left=6.0, resume_setup_delay_ms=600)
    async with FakeGeminiLive(script=script) as fake:
        result, record = await go_away_call(fake)
        assert len(fake.sessions) == 2, fake.summary()
        first, second = fake.sessions
        await fake.wait_for(lambda: first.closed, 5, "the first session closed")
    # The second session resumed the first with the newest handle (the one issued when the reply in
    # flight ended), and was opened while the first was still up: the server never had to cut it.
    assert second.resumption_handle == first.issued_handles[-1]
    assert first.closed_reason != DEADLINE_REASON, "the bridge left the old session before its cut"
    assert first.replies[0].completed and not first.replies[0].interrupted
    # The caller heard both replies whole: every ms of reply audio the fake sent, with no gap.
    sent_ms = sum(r.audio_ms_sent for s in fake.sessions for r in s.replies)
    assert sent_ms >= 2 * 1500 - 1
    assert heard_ms(result.heard) >= sent_ms - 60, (heard_ms(result.heard), sent_ms)
    assert len(result.reply_latencies()) == 2
    # Caller audio around the switch reached a session: what the old one got after its goAway plus
    # all the new one got is what the caller sent from then on (less what was still in flight at hang-up).
    received = first.audio_ms() - first.audio_ms_at_go_away + second.audio_ms()
    sent = caller_ms_after(result, first.go_away_at)
    print(f"caller audio after goAway: sent {sent:.0f} ms, received {received:.0f} ms")
    # (250 ms of slack for frames in flight on a loaded box; losing the 600 ms resume is what this catches)
    assert sent - 250 <= received <= sent + 100, (sent, received)
    # And the switch is counted, in the record and the summary line.
    assert record.session_switches == 1
    assert any("ended:" in line and "session_switches=1" in line for line in log_lines)
    assert not first.protocol_errors and not second.protocol_errors


async def test_go_away_with_little_time_left_switches_at_once(log_lines: list[str]) -> None:
    script = GeminiScript(go_away_at_reply_ms=200, go_away_time_left=1.0, reply_audio=tone(4.0), pace=1.0)
    async with FakeGeminiLive(script=script) as fake:
        result, record = await go_away_call(fake)
        first, second = fake.sessions[:2]
        await fake.wait_for(lambda: first.closed, 5, "the first session closed")
    assert second.resumption_handle is None or second.resumption_handle in first.issued_handles
    assert second.resumed == bool(first.issued_handles)
    assert first.closed_reason != DEADLINE_REASON, "switched before the cut, not after it"
    assert not first.replies[0].completed, "without waiting for the 4 s reply to end"
    assert record.session_switches == 1
    assert len(result.reply_latencies()) == 2, "the call went on: the caller's next turn was answered"


def heard_after(result, t: float) -> bool:
    """Whether reply audio started playing to the caller after caller-clock time ``t``."""
    return any(e.t > t for e in result.events_of("audio_start"))


async def test_a_tool_call_the_model_cancels_gets_no_result() -> None:
    user_tools.CALLS.clear()
    script = GeminiScript(tool_call={"name": "slow_lookup", "args": {"order_id": "A1"}}, tool_cancel_after_ms=300)
    async with FakeGeminiLive(script=script) as fake:
        yaml_text = chain_yaml(fake, turn_detection="model", vad=False, tools="['stages.tools:slow_lookup']")
        with LiveServer(yaml_text) as server:
            # The tool would answer 2.5 s after it was called (and say "still running" after 1 s): wait past that.
            steps = [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=4.0), Say(speech("hello-world")),
                     WaitQuiet(idle=1.0)]
            result = await run_call(server.ws_url, steps)
        session = fake.sessions[0]
    print(result.timeline())
    assert user_tools.CALLS == [("slow_lookup", {"order_id": "A1"})], "the tool was running when it was cancelled"
    assert session.cancelled_call_ids == ["fc1"]
    answered = [r.get("id") for body in session.tool_responses for r in body.get("functionResponses") or []]
    assert "fc1" not in answered, session.tool_responses
    assert heard_after(result, result.utterances[1][0]), "the call went on: the next turn was answered"
    assert not session.protocol_errors


async def test_an_end_call_the_model_cancels_does_not_hang_up() -> None:
    script = GeminiScript(tool_call={"name": "end_call", "args": {"reason": "caller is done"}}, tool_cancel_after_ms=150)
    async with FakeGeminiLive(script=script) as fake:
        with LiveServer(chain_yaml(fake, turn_detection="model", vad=False)) as server:
            # Uncancelled, the line would close 0.8 s after end_call (nothing is playing): well inside these waits.
            steps = [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=2.5), Say(speech("hello-world")),
                     WaitQuiet(idle=1.0)]
            result = await run_call(server.ws_url, steps)
        session = fake.sessions[0]
    print(result.timeline())
    assert session.replies[0].tool_call["name"] == "end_call" and session.cancelled_call_ids == ["fc1"]
    assert not result.events_of("closed")[-1].detail.endswith("by server"), "the bridge did not hang up"
    assert heard_after(result, result.utterances[1][0]), "the caller talked on and was answered"
    assert not session.protocol_errors


async def test_every_part_of_a_multi_part_model_turn_reaches_the_caller() -> None:
    script = GeminiScript(parts_per_message=3)
    async with FakeGeminiLive(script=script) as fake:
        with LiveServer(chain_yaml(fake, turn_detection="model", vad=False)) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=1.5)])
        session = fake.sessions[0]
    print(result.timeline())
    sent_8k_samples = sum(r.audio_ms_sent for r in session.replies) * 8  # μ-law bytes at 8 kHz
    assert sent_8k_samples == len(fake.reply_pcm) // 2 // 3
    print(f"reply: sent {sent_8k_samples:.0f} samples (8 kHz), heard {result.media_bytes_received} bytes")
    assert result.media_bytes_received >= sent_8k_samples - 160, "all three parts of every message were played"
    assert heard_ms(result.heard) >= sum(r.audio_ms_sent for r in session.replies) - 60
