"""End to end: a real uvicorn server, the echo chain, and a simulated Twilio caller speaking real speech."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard, WaitQuiet, run_call
from conftest import LiveServer, speech

FRAME = 160


def envelope(pcm: np.ndarray) -> np.ndarray:
    """20 ms RMS envelope in dB: robust to μ-law/resampling, sensitive to the words' shape."""
    n = len(pcm) // FRAME
    frames = pcm[: n * FRAME].astype(np.float64).reshape(n, FRAME)
    return 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1.0)


def best_match(sent_env: np.ndarray, heard_env: np.ndarray) -> tuple[float, int]:
    """Highest normalised correlation of the utterance's envelope anywhere in what was heard."""
    best, at = -1.0, -1
    a = sent_env - sent_env.mean()
    for lag in range(0, len(heard_env) - len(sent_env) + 1):
        b = heard_env[lag : lag + len(sent_env)]
        b = b - b.mean()
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        if denom > 0:
            c = float(a @ b / denom)
            if c > best:
                best, at = c, lag
    return best, at


async def test_echo_plays_back_the_utterance_after_the_caller_stops(echo_server: LiveServer) -> None:
    words = speech("hello-world")
    result = await run_call(echo_server.ws_url, [Pause(0.4), Say(words, "hello-world"), WaitQuiet(idle=0.8)])
    print(result.timeline())

    (onset, offset), = result.utterances
    latency, = result.reply_latencies()
    assert latency <= 2.0, f"echo started {latency:.2f} s after the caller stopped (~0.7 s when idle)"
    # What came back is the caller's utterance: same envelope, after they stopped talking.
    sent_env = envelope(result.sent[int(onset * 8000) : int(offset * 8000)])
    heard_env = envelope(result.heard)
    corr, lag = best_match(sent_env, heard_env)
    assert corr >= 0.85, f"heard audio does not match the utterance (r={corr:.2f})"
    assert lag * 0.02 >= offset - 0.05, "echo overlapped the caller's own speech"
    assert result.close_code == 1000
    assert not result.clears, "nothing to clear when the caller does not talk over the echo"


async def test_barge_in_clears_once_and_nothing_stale_follows(echo_server: LiveServer) -> None:
    steps = [Pause(0.4), Say(speech("all-circuits-busy-now"), "long"), WaitHeard(after=0.4),
             Say(speech("vm-goodbye"), "barge-in"), WaitQuiet(idle=0.8)]
    result = await run_call(echo_server.ws_url, steps)
    print(result.timeline())

    assert len(result.clears) == 1, f"expected one clear, got {result.clears}"
    clear_latency, = result.clear_latencies()
    assert clear_latency <= 0.8, f"clear came {clear_latency * 1000:.0f} ms after the caller started talking"
    assert result.stale_media_after_clear == 0
    # The interrupted echo stopped: less than the whole first utterance was heard before the clear.
    first_reply = next(e.t for e in result.events_of("audio_start"))
    assert result.clears[0] - first_reply < 1.8 - 0.5
    # And the barge-in utterance itself is echoed afterwards.
    assert result.reply_latencies()[1] <= 2.0  # no reply (nan) fails; a busy box's headroom


async def test_marks_are_sent_and_every_echo_is_consumed(echo_server: LiveServer) -> None:
    await asyncio.to_thread(echo_server.wait_idle)
    before = echo_server.calls.finished
    result = await run_call(echo_server.ws_url, [Say(speech("one-moment-please")), WaitQuiet(idle=0.8)])
    assert result.marks_received >= 10, "a mark at least every 100 ms of a 1.5 s echo"
    assert len(result.marks_echoed) == result.marks_received
    await asyncio.to_thread(echo_server.wait_idle, before + 1)
    assert echo_server.calls.finished == before + 1
    assert echo_server.call_tasks() == []


async def test_http_mode_follows_the_twiml_to_the_stream(echo_server: LiveServer) -> None:
    result = await run_call(echo_server.http_url, [Say(speech("vm-goodbye")), WaitQuiet(idle=0.8)],
                            from_number="+15551230000", to_number="+15559870000")
    assert result.custom_parameters["caller"] == "+15551230000"
    assert result.custom_parameters["callee"] == "+15559870000"
    assert result.reply_latencies()[0] <= 2.0  # no reply (nan) fails; a busy box's headroom


async def _raw_stream(url: str, frames: int, *, stop: bool) -> None:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZraw", "start": {
            "accountSid": "ACx", "streamSid": "MZraw", "callSid": "CA" + "a" * 32, "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {}}}))
        payload = "/" * 216  # b64 of 0xFF bytes: μ-law silence
        for i in range(frames):
            await ws.send(json.dumps({"event": "media", "sequenceNumber": str(i + 2), "streamSid": "MZraw",
                                      "media": {"track": "inbound", "chunk": str(i + 1),
                                                "timestamp": str(i * 20), "payload": payload}}))
        if stop:
            await ws.send(json.dumps({"event": "stop", "sequenceNumber": str(frames + 2), "streamSid": "MZraw",
                                      "stop": {"accountSid": "ACx", "callSid": "CA" + "a" * 32}}))
            await ws.recv()  # the server closes after stop
        else:
            ws.transport.abort() if hasattr(ws, "transport") else None


@pytest.mark.parametrize("stop", [True, False], ids=["stop", "abrupt-disconnect"])
async def test_call_end_leaves_nothing_running(echo_server: LiveServer, stop: bool) -> None:
    await asyncio.to_thread(echo_server.wait_idle)
    before = echo_server.calls.finished
    try:
        await _raw_stream(echo_server.ws_url, 25, stop=stop)
    except websockets.ConnectionClosed:
        pass
    await asyncio.to_thread(echo_server.wait_idle, before + 1)
    assert echo_server.calls.finished == before + 1
    assert not echo_server.calls.live
    assert echo_server.call_tasks() == []


async def test_malformed_messages_are_skipped_and_the_call_goes_on(echo_server: LiveServer) -> None:
    async with websockets.connect(echo_server.ws_url) as ws:
        await ws.send(json.dumps({"event": "connected"}))
        await ws.send(json.dumps({"event": "start", "streamSid": "MZbad", "start": {
            "streamSid": "MZbad", "callSid": "CA" + "b" * 32, "customParameters": {}}}))
        for junk in ["not json", "[]", json.dumps({"event": "media", "media": {"payload": "***"}}),
                     json.dumps({"event": "nonsense"})]:
            await ws.send(junk)
        await ws.send(json.dumps({"event": "mark", "streamSid": "MZbad", "mark": {"name": "unknown"}}))
        await ws.send(json.dumps({"event": "stop", "streamSid": "MZbad", "stop": {}}))
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), 10)
    await asyncio.to_thread(echo_server.wait_idle)


async def test_stream_without_start_is_closed_with_policy_violation(echo_server: LiveServer) -> None:
    async with websockets.connect(echo_server.ws_url) as ws:
        await ws.send(json.dumps({"event": "media", "media": {"payload": ""}}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd.code == 1008
