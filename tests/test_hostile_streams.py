"""Whoever opens /media-stream may not be Twilio: hostile input ends that stream only, with the right code.

Raw WebSocket clients against the real server (uvicorn in a thread, the echo
chain); the server's own state (live calls, each stream's bad-message counter)
is polled to know what it has processed, never guessed with sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_voice_bridge.audio import mulaw
from agent_voice_bridge.serving import MAX_MESSAGE_BYTES
from agent_voice_bridge.transports import twilio_stream
from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitQuiet, run_call
from agent_voice_bridge.transports.twilio_protocol import (
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    parse_event,
)
from conftest import ECHO_YAML, LiveServer, speech
from test_echo_call import best_match, envelope

CONNECTED = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
SPEECH_RMS = 32768 * 10 ** (-40 / 20)
JUNK: list[str | bytes] = [
    "not json at all",
    "{\"event\": \"media\", \"media\": {\"payload\": \"***not base64***\"}}",
    "{\"event\": \"media\", \"media\": {\"payload\": 12345}}",
    "{\"event\": \"media\"}",
    "{\"event\": \"nonsense\"}",
    "{\"no_event\": true}",
    "[1, 2, 3]",
    "null",
    "{\"event\": \"mark\", \"mark\": {}}",
    "{\"event\": \"dtmf\", \"dtmf\": []}",
    "{\"event\": \"start\", \"start\": \"not an object\"}",
    "[" * 50000,
]
"""Malformed JSON, unknown events, bad base64, wrong types: each is skipped and counted."""
ODD = [
    json.dumps({"event": "mark", "mark": {"name": "0:99999:0"}}),
    json.dumps({"event": "mark", "mark": {"name": "not one of ours"}}),
    json.dumps({"event": "dtmf", "dtmf": {"digit": "Z"}}),
    json.dumps({"event": "dtmf", "dtmf": {"digit": "5"}}),
]
"""Well-formed events no real call would send like this: taken without closing the stream."""


def start_message(call_sid: str | None = None) -> str:
    sid = "MZ" + uuid.uuid4().hex
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
        "accountSid": "AC" + "0" * 32, "streamSid": sid, "callSid": call_sid or "CA" + uuid.uuid4().hex,
        "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {}}})


def media_message(wire: bytes, k: int = 0) -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(k + 2), "media": {
        "track": "inbound", "chunk": str(k + 1), "timestamp": str(k * 20),
        "payload": base64.b64encode(wire).decode()}})


SILENCE = media_message(bytes([mulaw.SILENCE_BYTE]) * 160)


@dataclass
class Outcome:
    code: int | None
    sent: int
    seconds: float
    """From the first hostile message to the server's close."""
    media_received: int


async def hostile(url: str, messages: list[str | bytes], *, prelude: list[str] = (), timeout: float = 10) -> Outcome:
    """Send ``prelude`` then ``messages`` as fast as possible, then wait for the server to close."""
    async with websockets.connect(url, max_size=None) as ws:
        for message in prelude:
            await ws.send(message)
        began, sent, media = time.monotonic(), 0, 0
        try:
            for message in messages:
                await ws.send(message)
                sent += 1
        except websockets.ConnectionClosed:
            pass
        try:
            while True:
                reply = await asyncio.wait_for(ws.recv(), timeout)
                media += isinstance(reply, str) and json.loads(reply).get("event") == "media"
        except websockets.ConnectionClosed:
            pass
        return Outcome(ws.close_code, sent, time.monotonic() - began, media)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    """The echo line with checks off (no auth token), so hostile streams get past ``start``."""
    with LiveServer(ECHO_YAML, "pipelines/echo.yaml") as live:
        yield live


@pytest.fixture(autouse=True)
def nothing_left_behind(server: LiveServer) -> Iterator[None]:
    """After every test: no live call and no call task is left on the server."""
    yield
    server.wait_idle()


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def live_stream(server: LiveServer, call_sid: str) -> twilio_stream.TwilioMediaStream | None:
    for call in list(server.calls.live.values()):
        if call.info.call_sid == call_sid:
            return call.info.stream
    return None


# --------------------------------------------------------------------------- one rule at a time


@pytest.mark.parametrize("after_start", [False, True], ids=["before-start", "mid-call"])
async def test_binary_frame_closes_1003(server: LiveServer, after_start: bool) -> None:
    prelude = [CONNECTED, start_message(), SILENCE] if after_start else [CONNECTED]
    outcome = await hostile(server.ws_url, [b"\xff" * 160], prelude=prelude)
    assert outcome.code == 1003
    assert outcome.seconds < 2


async def test_message_over_64_kib_closes_1009_but_a_large_junk_one_is_only_skipped(server: LiveServer) -> None:
    sid = "CA" + uuid.uuid4().hex
    async with websockets.connect(server.ws_url, max_size=None) as ws:
        for message in (CONNECTED, start_message(sid), SILENCE):
            await ws.send(message)
        await wait_for(lambda: live_stream(server, sid) is not None, 5, "the call to start")
        stream = live_stream(server, sid)
        assert stream is not None
        await ws.send("x" * (MAX_MESSAGE_BYTES - 1000))  # big but allowed: skipped as not JSON
        await wait_for(lambda: stream.bad_messages == 1, 5, "the large junk message to be counted")
        assert not stream.closed
        await ws.send(json.dumps({"event": "media", "media": {"payload": "A" * MAX_MESSAGE_BYTES}}))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1009


async def test_media_before_start_closes_1008(server: LiveServer) -> None:
    refused = server.calls.refused
    outcome = await hostile(server.ws_url, [SILENCE] * 5, prelude=[CONNECTED])
    print(f"media before start: closed {outcome.code} after {outcome.seconds * 1000:.0f} ms")
    assert outcome.code == 1008 and outcome.seconds < 2 and outcome.media_received == 0
    assert server.calls.refused == refused + 1


async def test_second_start_is_skipped_and_the_call_goes_on(server: LiveServer) -> None:
    sid = "CA" + uuid.uuid4().hex
    words = mulaw.encode_array(speech("hello-world"))
    frames = [words[i : i + 160] for i in range(0, len(words) - 159, 160)]
    received = 0
    async with websockets.connect(server.ws_url, max_size=None) as ws:
        await ws.send(CONNECTED)
        await ws.send(start_message(sid))
        await wait_for(lambda: live_stream(server, sid) is not None, 5, "the call to start")
        stream = live_stream(server, sid)
        assert stream is not None
        await ws.send(start_message("CAimpostor"))
        await wait_for(lambda: stream.bad_messages == 1, 5, "the second start to be counted")
        assert live_stream(server, "CAimpostor") is None

        async def receive() -> None:
            nonlocal received
            async for reply in ws:
                message = json.loads(reply)
                if message.get("event") == "media":
                    received += len(base64.b64decode(message["media"]["payload"]))

        receiver = asyncio.create_task(receive())
        # Speak in real time (one 20 ms frame per 20 ms of clock), then silence until the echo has come.
        t0 = time.monotonic()
        silent = bytes([mulaw.SILENCE_BYTE]) * 160
        k = 0
        while k < len(frames) or (received < 4000 and k < len(frames) + 200):
            await asyncio.sleep(max(0.0, t0 + 0.02 * k - time.monotonic()))
            await ws.send(media_message(frames[k] if k < len(frames) else silent, k))
            k += 1
        await ws.send(json.dumps({"event": "stop", "stop": {}}))
        await asyncio.wait_for(receiver, 10)
    assert received >= 4000, f"the echo did not come back after a second start ({received} B)"
    assert ws.close_code == 1000
    assert stream.start is not None and stream.start.call_sid == sid, "the first start stays in force"


async def test_flood_faster_than_real_time_closes_1008(server: LiveServer) -> None:
    # A burst within the allowance (network bunching) is fine...
    sid = "CA" + uuid.uuid4().hex
    burst = await hostile(server.ws_url, [SILENCE] * 80 + [json.dumps({"event": "stop", "stop": {}})],
                          prelude=[CONNECTED, start_message(sid)])
    assert burst.code == 1000, "80 frames (1.6 s of audio) at once is within the allowance"
    # ...2000 frames (40 s of audio) as fast as the socket takes them is not.
    outcome = await hostile(server.ws_url, [SILENCE] * 2000, prelude=[CONNECTED, start_message()])
    print(f"flood: closed {outcome.code} after {outcome.seconds * 1000:.0f} ms, {outcome.sent} frames sent")
    assert outcome.code == 1008
    assert outcome.seconds < 2


async def test_malformed_messages_are_counted_and_the_50th_closes_1008(server: LiveServer) -> None:
    sid = "CA" + uuid.uuid4().hex
    async with websockets.connect(server.ws_url, max_size=None) as ws:
        await ws.send(CONNECTED)
        await ws.send(start_message(sid))
        await wait_for(lambda: live_stream(server, sid) is not None, 5, "the call to start")
        stream = live_stream(server, sid)
        assert stream is not None
        for i in range(49):
            await ws.send(JUNK[i % len(JUNK)])
        await ws.send(SILENCE)  # a good message in between is still taken
        await wait_for(lambda: stream.bad_messages == 49, 5, "49 bad messages to be counted")
        assert not stream.closed and ws.close_code is None, "49 bad messages are skipped, the call goes on"
        began = time.monotonic()
        await ws.send("the fiftieth")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        print(f"50th bad message: closed after {(time.monotonic() - began) * 1000:.0f} ms")
    assert ws.close_code == 1008
    assert stream.bad_messages == 50


@pytest.mark.parametrize("after_start", [False, True], ids=["before-start", "mid-call"])
async def test_idle_peer_is_closed_1008(server: LiveServer, monkeypatch: pytest.MonkeyPatch,
                                        after_start: bool) -> None:
    monkeypatch.setattr(twilio_stream, "IDLE_SECONDS", 0.5)
    async with websockets.connect(server.ws_url) as ws:
        if after_start:
            await ws.send(CONNECTED)
            await ws.send(start_message())
        began = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        idle = time.monotonic() - began
    print(f"idle peer closed after {idle:.2f} s")
    assert ws.close_code == 1008
    assert 0.4 <= idle < 2.0


async def test_a_peer_that_keeps_sending_outlives_the_idle_limit(server: LiveServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle limit counts from the last message (one timer re-armed per idle period, not one per message)."""
    monkeypatch.setattr(twilio_stream, "IDLE_SECONDS", 0.3)
    silent = bytes([mulaw.SILENCE_BYTE]) * 160
    async with websockets.connect(server.ws_url) as ws:
        await ws.send(CONNECTED)
        await ws.send(start_message())
        began = time.monotonic()
        k = 0
        while time.monotonic() - began < 1.2:  # four idle periods of media on Twilio's 20 ms clock
            await ws.send(media_message(silent, k))
            k += 1
            await asyncio.sleep(0.02)
        assert ws.close_code is None, f"closed after {time.monotonic() - began:.2f} s of steady media"
        quiet_from = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        quiet = time.monotonic() - quiet_from
    print(f"{k} media messages over 1.2 s kept it open; then closed {quiet:.2f} s after the last one")
    assert ws.close_code == 1008
    assert 0.25 <= quiet < 1.5


# --------------------------------------------------------------------------- all at once, next to a real call


KINDS: dict[str, tuple[Callable[[], tuple[list[str], list[str | bytes]]], int]] = {
    "junk-after-start": (lambda: ([CONNECTED, start_message()], [JUNK[i % len(JUNK)] for i in range(500)]), 1008),
    "junk-before-start": (lambda: ([CONNECTED], [JUNK[i % len(JUNK)] for i in range(500)]), 1008),
    "flood": (lambda: ([CONNECTED, start_message()], [SILENCE] * 500), 1008),
    "repeated-start": (lambda: ([CONNECTED, start_message()], [start_message() for _ in range(500)]), 1008),
    "media-before-start": (lambda: ([CONNECTED], [SILENCE] * 500), 1008),
    "binary": (lambda: ([CONNECTED, start_message()], ["junk"] * 30 + [b"\x00" * 500] + ["junk"] * 469), 1003),
    # Well-formed but meaningless marks and key presses, within their budgets (taken, ignored), then one message
    # over 64 KiB. It comes last: uvicorn drops the socket right after its 1009 close frame, and a peer still
    # sending then gets a TCP reset that can swallow the close frame (seen as 1006).
    "oversized": (lambda: ([CONNECTED, start_message()], [ODD[i % len(ODD)] for i in range(20)] + ["x" * 100_000]),
                  1009),
    # The same, past their budgets: more mark echoes than marks sent, key presses faster than anyone types.
    "mark-flood": (lambda: ([CONNECTED, start_message()], [ODD[0]] * 500), 1008),
    "dtmf-flood": (lambda: ([CONNECTED, start_message()], [ODD[3]] * 500), 1008),
    "connected-flood": (lambda: ([], [CONNECTED] * 500), 1008),
    "connected-after-start": (lambda: ([CONNECTED, start_message()], [CONNECTED] * 500), 1008),
}


async def test_twenty_hostile_connections_leave_health_and_a_real_call_intact(server: LiveServer) -> None:
    finished_before = server.calls.finished
    done = asyncio.Event()
    health: list[tuple[int, float]] = []

    async def watch_health() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while not done.is_set():
                began = time.monotonic()
                status = (await client.get(server.http_url.replace("/incoming", "/healthz"))).status_code
                health.append((status, time.monotonic() - began))
                await asyncio.sleep(0.05)

    async def attacker(i: int, kind: str) -> tuple[str, Outcome]:
        await asyncio.sleep(0.2 * i)  # spread the attack over the legitimate call's speech and echo
        make, _ = KINDS[kind]
        prelude, messages = make()
        return kind, await hostile(server.ws_url, messages, prelude=prelude)

    watcher = asyncio.create_task(watch_health())
    call = asyncio.create_task(run_call(server.ws_url, [Pause(0.5), Say(speech("hello-world")), WaitQuiet(idle=0.8)]))
    kinds = list(KINDS)
    outcomes = await asyncio.gather(*(attacker(i, kinds[i % len(kinds)]) for i in range(20)))
    result = await call
    done.set()
    await watcher

    print(result.timeline())
    sent = sum(o.sent for _, o in outcomes)
    print(f"hostile messages sent: {sent}; /healthz polls: {len(health)}, slowest {max(t for _, t in health):.3f} s")
    for kind, outcome in outcomes:
        assert outcome.code == KINDS[kind][1], f"{kind}: closed with {outcome.code}"
        assert outcome.media_received == 0, f"{kind}: got audio back"
    assert sent >= 5000
    assert len(health) >= 20 and all(status == 200 for status, _ in health)
    assert max(t for _, t in health) < 1.0
    latency = result.reply_latencies()[0]
    assert latency <= 2.0, f"the real call's echo came {latency:.2f} s late"
    loud = np.sqrt((result.heard[: len(result.heard) // 160 * 160].astype(float).reshape(-1, 160) ** 2).mean(1))
    assert np.count_nonzero(loud > SPEECH_RMS) * 0.02 >= 0.5, "the real call heard hardly any echo"
    (onset, offset), = result.utterances
    corr, _ = best_match(envelope(result.sent[int(onset * 8000) : int(offset * 8000)]), envelope(result.heard))
    assert corr >= 0.85, f"the real call's echo is not its utterance (r={corr:.2f})"
    assert result.close_code == 1000
    await asyncio.to_thread(server.wait_idle, finished_before + 1)


# --------------------------------------------------------------------------- the parser, fuzzed

EVENTS = (Connected, Start, Media, Mark, Dtmf, Stop)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {"event": st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "clear", ""]) | json_values},
    optional={
        "streamSid": json_values,
        "media": st.fixed_dictionaries({}, optional={"payload": st.text(max_size=40) | json_values,
                                                     "track": json_values}) | json_values,
        "start": st.fixed_dictionaries({}, optional={
            "streamSid": json_values, "callSid": json_values, "tracks": json_values,
            "customParameters": json_values, "mediaFormat": st.fixed_dictionaries(
                {}, optional={"sampleRate": json_values, "encoding": json_values}) | json_values}) | json_values,
        "mark": st.fixed_dictionaries({}, optional={"name": json_values}) | json_values,
        "dtmf": st.fixed_dictionaries({}, optional={"digit": json_values}) | json_values,
    },
)


def parses_or_refuses(text: str | bytes) -> None:
    """An event, or ProtocolError: any other exception fails the test."""
    try:
        event = parse_event(text)
    except ProtocolError:
        return
    assert isinstance(event, EVENTS)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_event_on_arbitrary_text(text: str) -> None:
    parses_or_refuses(text)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_parse_event_on_arbitrary_bytes(data: bytes) -> None:
    parses_or_refuses(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_event_on_arbitrary_json(value: object) -> None:
    parses_or_refuses(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(event_like)
def test_parse_event_on_event_shaped_json(value: dict) -> None:
    parses_or_refuses(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parse_event_round_trips_any_media_payload(payload: bytes) -> None:
    event = parse_event(json.dumps({"event": "media", "media": {"payload": base64.b64encode(payload).decode()}}))
    assert event == Media(payload)
