"""The simulated Twilio caller against a tiny fake bridge written here.

Why a fake and not the product server: these tests pin down the caller's own
Twilio behaviour (wire shapes, 50 frames/s, sequence numbers, mark/clear
semantics, signed webhooks) so that server tests built on it can trust it.
The fake checks every message it receives and records what it saw; the tests
then assert on both sides. Nothing here sleeps to wait for a race: the only
sleeps are the fake's deliberate 200 ms echo delay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import socket
import wave
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request as WsRequest

from agent_voice_bridge.audio import mulaw
from agent_voice_bridge.transports.simulated_caller import (
    CallResult,
    CallSetupError,
    Dtmf,
    Pause,
    Say,
    WaitHeard,
    WaitQuiet,
    load_wav,
    parse_twiml,
    run_call,
    save_wav,
)

SOUNDS = Path("/usr/share/asterisk/sounds/en")
AUTH_TOKEN = "test-auth-token-12345"
PAYLOAD_B64_LEN = 216  # 160 μ-law bytes


def speech(name: str) -> np.ndarray:
    """Real human telephone speech (asterisk-core-sounds-en-wav, 8 kHz 16-bit mono)."""
    path = SOUNDS / f"{name}.wav"
    if not path.exists():
        pytest.skip(f"{path} missing (apt-get install asterisk-core-sounds-en-wav)")
    return load_wav(path)


# --------------------------------------------------------------------------- the fake bridge

Hook = Callable[["FakeBridge", ServerConnection], Awaitable[None]]


class FakeBridge:
    """Plays the server: validates the caller's messages, echoes speech, obeys per-chunk hooks.

    ``echo_delay``: send each received non-silent frame back after this delay,
    followed by a mark (None: no echo). ``hooks``: chunk number → coroutine run
    when that media chunk arrives, or ``"speech"`` → run on the first loud frame.
    Shape problems are collected in ``errors`` (an assert inside the handler
    would only kill the connection, not fail the test).
    """

    def __init__(self, *, echo_delay: float | None = 0.2, hooks: dict[int | str, Hook] | None = None) -> None:
        self.echo_delay = echo_delay
        self.hooks = dict(hooks or {})
        self.errors: list[str] = []
        self.messages: list[dict[str, Any]] = []
        self.media_times: list[float] = []
        self.marks_sent: list[str] = []
        self.marks_back: list[str] = []
        self.start: dict[str, Any] = {}
        self.handshake_headers: Headers | None = None
        self.handshake_path = ""
        self.stream_sid = ""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()

    def process_request(self, _conn: ServerConnection, request: WsRequest) -> None:
        self.handshake_headers = request.headers
        self.handshake_path = request.path

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.errors.append(what)

    async def send(self, ws: ServerConnection, event: str, **body: Any) -> None:
        await ws.send(json.dumps({"event": event, "streamSid": self.stream_sid, **body}))

    async def send_audio(self, ws: ServerConnection, pcm: np.ndarray, mark: str | None) -> None:
        payload = base64.b64encode(mulaw.encode_array(pcm)).decode()
        await self.send(ws, "media", media={"payload": payload})
        if mark is not None:
            self.marks_sent.append(mark)
            await self.send(ws, "mark", mark={"name": mark})

    async def handler(self, ws: ServerConnection) -> None:
        try:
            self._check_connected(json.loads(await ws.recv()))
            self._check_start(json.loads(await ws.recv()))
            async for raw in ws:
                await self._on_message(ws, json.loads(raw))
        finally:
            for task in self._tasks:
                task.cancel()
            if not self.done.done():
                self.done.set_result(None)

    def _check_connected(self, msg: dict[str, Any]) -> None:
        self.check(msg == {"event": "connected", "protocol": "Call", "version": "1.0.0"}, f"connected: {msg}")

    def _check_start(self, msg: dict[str, Any]) -> None:
        self.check(msg.get("event") == "start" and msg.get("sequenceNumber") == "1", f"start header: {msg}")
        start = msg.get("start", {})
        self.start = start
        self.stream_sid = msg.get("streamSid", "")
        self.check(start.get("streamSid") == self.stream_sid, "start.streamSid differs from streamSid")
        for key, prefix in (("accountSid", "AC"), ("callSid", "CA"), ("streamSid", "MZ")):
            sid = start.get(key, "")
            self.check(sid.startswith(prefix) and len(sid) == 34, f"{key} {sid!r}")
        self.check(start.get("tracks") == ["inbound"], f"tracks {start.get('tracks')}")
        fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        self.check(start.get("mediaFormat") == fmt, f"mediaFormat {start.get('mediaFormat')}")
        self.check(isinstance(start.get("customParameters"), dict), "customParameters missing")
        self.messages.append(msg)

    async def _on_message(self, ws: ServerConnection, msg: dict[str, Any]) -> None:
        previous = self.messages[-1]
        self.check(previous.get("event") != "stop", f"{msg.get('event')} after stop")
        seq = msg.get("sequenceNumber")
        self.check(isinstance(seq, str) and int(seq) == int(previous["sequenceNumber"]) + 1, f"sequence {seq}")
        self.check(msg.get("streamSid") == self.stream_sid, f"streamSid {msg.get('streamSid')}")
        self.messages.append(msg)
        event = msg.get("event")
        if event == "media":
            await self._on_media(ws, msg["media"])
        elif event == "mark":
            self.marks_back.append(msg["mark"]["name"])
        elif event == "dtmf":
            self.check(msg.get("dtmf", {}).get("track") == "inbound_track", f"dtmf {msg}")
        elif event == "stop":
            stop = msg.get("stop", {})
            self.check(stop.get("callSid") == self.start.get("callSid"), f"stop {stop}")
            self.check(stop.get("accountSid") == self.start.get("accountSid"), f"stop {stop}")
        else:
            self.errors.append(f"unexpected event {event}")

    async def _on_media(self, ws: ServerConnection, media: dict[str, Any]) -> None:
        self.media_times.append(asyncio.get_running_loop().time())
        n = len(self.media_times)
        chunk, timestamp, payload = media.get("chunk"), media.get("timestamp"), media.get("payload", "")
        self.check(chunk == str(n), f"chunk {chunk!r} for frame {n}")
        self.check(timestamp == str((n - 1) * 20), f"timestamp {timestamp!r} for frame {n}")
        self.check(media.get("track") == "inbound", f"track {media.get('track')}")
        self.check(isinstance(payload, str) and len(payload) == PAYLOAD_B64_LEN, f"payload length {len(payload)}")
        frame = mulaw.decode_array(base64.b64decode(payload))
        loud = bool(np.sqrt(np.mean(frame.astype(float) ** 2)) > 327)
        if self.echo_delay is not None and loud:
            self._spawn(self._echo_later(ws, frame, f"echo-{chunk}"))
        hook = self.hooks.pop(n, None) or (self.hooks.pop("speech", None) if loud else None)
        if hook is not None:
            await hook(self, ws)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _echo_later(self, ws: ServerConnection, frame: np.ndarray, mark: str) -> None:
        await asyncio.sleep(self.echo_delay or 0.0)  # the fake's deliberate 200 ms "model latency"
        with contextlib.suppress(Exception):
            await self.send_audio(ws, frame, mark)


@contextlib.asynccontextmanager
async def running(bridge: FakeBridge, path: str = "/media") -> AsyncIterator[str]:
    """Serve the fake on 127.0.0.1, port chosen by the OS; yield its ws:// URL."""
    async with serve(bridge.handler, "127.0.0.1", 0, process_request=bridge.process_request) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}{path}"


async def call(bridge: FakeBridge, steps: list[Any], **kwargs: Any) -> CallResult:
    async with running(bridge) as url:
        result = await run_call(url, steps, **kwargs)
        await asyncio.wait_for(bridge.done, 5)
    return result


def best_lag(sent: np.ndarray, heard: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Lag (samples) at which heard best matches sent, and the normalised correlation there."""
    a, b = sent.astype(float), heard.astype(float)
    best = (0, -1.0)
    for lag in range(0, max_lag + 1, 8):
        x, y = a[: len(a) - lag], b[lag:]
        denom = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
        score = float(np.dot(x, y)) / denom if denom else 0.0
        if score > best[1]:
            best = (lag, score)
    return best


# --------------------------------------------------------------------------- tests


async def test_wire_timing_echo_and_marks() -> None:
    """One real utterance: exact Twilio shapes, 50 frames/s, echo heard ~200 ms later, marks once."""
    goodbye = speech("vm-goodbye")
    bridge = FakeBridge(echo_delay=0.2)
    steps = [Pause(0.2), Say(goodbye, "goodbye"), WaitHeard(), WaitQuiet(idle=0.3)]
    result = await call(bridge, steps, tail=0.1, custom_parameters={"callToken": "abc"})

    assert bridge.errors == []
    assert bridge.start["customParameters"] == {"callToken": "abc"}
    assert bridge.start["callSid"] == result.call_sid and bridge.stream_sid == result.stream_sid

    times = bridge.media_times
    assert times[-1] - times[0] >= 1.0
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 45.0 <= rate <= 55.0, f"{rate:.1f} frames/s"

    assert bridge.messages[-1]["event"] == "stop"
    assert [e.kind for e in result.events][-2:] == ["stop", "closed"]
    assert result.close_code == 1000

    assert len(result.sent) == len(result.heard) == len(times) * 160
    assert len(result.utterances) == 1
    onset, offset = result.utterances[0]
    assert onset == pytest.approx(0.2 + 3 * 0.02) and offset == pytest.approx(0.2 + 40 * 0.02)

    lag, score = best_lag(result.sent, result.heard, max_lag=3200)
    assert 0.2 <= lag / 8000 <= 0.26, f"echo heard {lag / 8000:.3f} s later"
    assert score > 0.95

    assert bridge.marks_sent, "the fake sent marks"
    assert bridge.marks_back == bridge.marks_sent  # played in order, each exactly once
    assert result.marks_echoed == bridge.marks_sent and result.marks_received == len(bridge.marks_sent)
    assert result.media_bytes_received == 160 * len(bridge.marks_sent)
    assert [e.kind for e in result.events].count("audio_start") >= 1
    assert result.events_of("timeout") == [] and result.events_of("bad_message") == []
    assert result.clears == [] and result.stale_media_after_clear == 0
    assert "utterance 1" in result.timeline()


async def test_clear_drops_queue_and_echoes_pending_marks() -> None:
    """Barge-in: the bot talks, the caller speaks, the fake clears; the caller goes silent at once."""
    hello = speech("hello-world")
    goodbye = speech("vm-goodbye")
    pieces = np.array_split(hello, 7)

    async def talk(b: FakeBridge, ws: ServerConnection) -> None:
        for i, piece in enumerate(pieces):
            await b.send_audio(ws, piece, f"reply:{i}")

    async def barge_in(b: FakeBridge, ws: ServerConnection) -> None:
        await b.send(ws, "clear")

    bridge = FakeBridge(echo_delay=None, hooks={1: talk, "speech": barge_in})
    result = await call(bridge, [Pause(0.3), Say(goodbye, "barge-in"), WaitQuiet(idle=0.2)], tail=0.1)

    assert bridge.errors == []
    assert len(result.clears) == 1
    tc = result.clears[0]
    assert [e.t for e in result.events_of("clear")] == [tc]
    onset = result.utterances[0][0]
    assert 0.0 < result.clear_latencies()[0] <= 0.06, f"clear {tc} vs onset {onset}"

    at_clear = round(tc * 8000)
    assert np.abs(result.heard[at_clear - 800 : at_clear]).max() > 1000, "the reply was playing before the clear"
    assert not result.heard[at_clear + 160 :].any(), "heard must go silent within one tick of the clear"
    assert np.count_nonzero(result.heard) < len(hello) // 2, "queued audio was dropped, not played"

    assert Counter(bridge.marks_back) == Counter(bridge.marks_sent)  # each mark exactly once
    assert max(Counter(bridge.marks_back).values()) == 1
    cleared = [e for e in result.events_of("mark") if "cleared" in e.detail]
    assert cleared and all(e.t == tc for e in cleared)
    assert result.events_of("audio_end")[-1].t == pytest.approx(tc)
    assert result.stale_media_after_clear == 0
    assert bridge.messages[-1]["event"] == "stop"


async def test_timeline_gives_a_replys_marks_one_line() -> None:
    """A mark per 20 ms frame would be 40 timeline lines for one echoed word: each reply's marks are one line."""
    bridge = FakeBridge(echo_delay=0.2)
    result = await call(bridge, [Pause(0.2), Say(speech("vm-goodbye"), "goodbye"), WaitHeard(), WaitQuiet(idle=0.3)],
                        tail=0.1)
    assert bridge.errors == [] and len(bridge.marks_sent) >= 10

    text = result.timeline()
    lines = text.splitlines()
    n = len(bridge.marks_sent)
    assert [line.split()[2:] for line in lines if " s  mark" in line] == [["marks", f"{n}/{n}", "echoed"]], text
    assert "heard audio in" not in text and " s of audio; close code 1000" in text
    detailed = result.timeline(every_mark=True)
    assert sum(" mark " in line for line in detailed.splitlines()) == n, "every_mark lists each echo"


async def test_timeline_says_how_a_cleared_replys_marks_came_back() -> None:
    hello = speech("hello-world")

    async def talk(b: FakeBridge, ws: ServerConnection) -> None:
        for i, piece in enumerate(np.array_split(hello, 7)):
            await b.send_audio(ws, piece, f"reply:{i}")

    async def barge_in(b: FakeBridge, ws: ServerConnection) -> None:
        await b.send(ws, "clear")

    bridge = FakeBridge(echo_delay=None, hooks={1: talk, "speech": barge_in})
    result = await call(bridge, [Pause(0.3), Say(speech("vm-goodbye"), "barge-in"), WaitQuiet(idle=0.2)], tail=0.1)
    played = sum("played" in e.detail for e in result.events_of("mark"))
    marks = [line for line in result.timeline().splitlines() if " s  mark" in line]
    assert len(marks) == 1 and marks[0].endswith(f"marks             7/7 echoed ({played} played, {7 - played} cleared)")


async def test_media_right_after_clear_counts_as_stale() -> None:
    """Audio sent just after a clear belongs to the interrupted turn; later audio does not count."""
    tone = (8000 * np.sin(np.arange(800) * 2 * np.pi * 440 / 8000)).astype(np.int16)

    async def clear_then_leak(b: FakeBridge, ws: ServerConnection) -> None:
        await b.send(ws, "clear")
        await b.send_audio(ws, tone, None)

    async def later_reply(b: FakeBridge, ws: ServerConnection) -> None:
        await b.send_audio(ws, tone, "late")

    bridge = FakeBridge(echo_delay=None, hooks={5: clear_then_leak, 25: later_reply})
    result = await call(bridge, [Pause(0.8)], tail=0.1)

    assert bridge.errors == []
    assert result.stale_media_after_clear == 800
    assert len(result.events_of("media_after_clear")) == 1
    assert result.media_bytes_received == 1600
    assert bridge.marks_back == ["late"]


async def test_empty_queue_mark_and_bad_messages() -> None:
    """A mark with nothing queued returns at once; malformed messages are recorded, not fatal."""

    async def misbehave(b: FakeBridge, ws: ServerConnection) -> None:
        await ws.send(b"\x00binary")
        await ws.send("not json")
        await ws.send(json.dumps({"event": "bogus", "streamSid": b.stream_sid}))
        await ws.send(json.dumps({"event": "media", "streamSid": b.stream_sid, "media": {"payload": "@@@"}}))
        await ws.send(json.dumps({"event": "mark", "streamSid": b.stream_sid, "mark": {}}))
        await ws.send(json.dumps({"event": "clear", "streamSid": "MZwrong"}))
        b.marks_sent.append("alone")
        await b.send(ws, "mark", mark={"name": "alone"})

    bridge = FakeBridge(echo_delay=None, hooks={3: misbehave})
    result = await call(bridge, [Pause(0.3)], tail=0.0)

    assert bridge.errors == []
    assert len(result.events_of("bad_message")) == 6
    assert result.clears == []
    assert bridge.marks_back == ["alone"]
    assert "nothing queued" in result.events_of("mark")[0].detail
    assert bridge.messages[-1]["event"] == "stop" and result.close_code == 1000


async def test_wait_heard_times_out_softly() -> None:
    bridge = FakeBridge(echo_delay=None)
    result = await call(bridge, [WaitHeard(after=1.0, timeout=0.2), Pause(0.1)], tail=0.0)
    assert [e.detail for e in result.events_of("timeout")] == ["WaitHeard: no reply within 0.2 s"]
    assert len(result.sent) == (10 + 5) * 160  # timeout skips `after`, the script goes on
    assert bridge.messages[-1]["event"] == "stop"


async def test_dtmf_shares_the_sequence_counter() -> None:
    bridge = FakeBridge(echo_delay=None)
    result = await call(bridge, [Pause(0.04), Dtmf("1#", gap=0.04)], tail=0.0)
    assert bridge.errors == []  # sequence numbers stayed +1 across media, dtmf and stop
    digits = [m["dtmf"]["digit"] for m in bridge.messages if m["event"] == "dtmf"]
    assert digits == ["1", "#"] and [e.detail for e in result.events_of("dtmf")] == digits
    assert [m["event"] for m in bridge.messages[1:]] == ["media"] * 2 + ["dtmf", "media", "media"] * 2 + ["stop"]


async def test_server_hangs_up_first() -> None:
    async def hang_up(b: FakeBridge, ws: ServerConnection) -> None:
        await ws.close(1011, "bye")

    bridge = FakeBridge(echo_delay=None, hooks={10: hang_up})
    result = await call(bridge, [Pause(3.0)], tail=0.5)
    assert result.close_code == 1011
    assert result.events_of("stop") == []
    assert "by server" in result.events_of("closed")[0].detail
    assert len(result.sent) <= 12 * 160
    assert len(result.sent) == len(result.heard)


# --------------------------------------------------------------------------- http mode


@contextlib.asynccontextmanager
async def twiml_server(routes: list[Route]) -> AsyncIterator[str]:
    """Starlette on uvicorn in-process; the socket is bound and listening before serve() starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=routes), log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_http_mode_signed_webhook_twiml_and_handshake() -> None:
    bridge = FakeBridge(echo_delay=None)
    seen: dict[str, Any] = {}
    async with running(bridge) as ws_url:

        async def incoming(request: Request) -> Response:
            # parse_qsl, not request.form(): that needs python-multipart, which is not installed here
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            seen["form"] = form
            seen["valid"] = RequestValidator(AUTH_TOKEN).validate(
                str(request.url), form, request.headers.get("X-Twilio-Signature", "")
            )
            response = VoiceResponse()
            response.say("Connecting")
            connect = Connect()
            connect.stream(url=ws_url).parameter(name="callToken", value="tok-1")
            response.append(connect)
            return Response(str(response), media_type="application/xml")

        async def busy(_request: Request) -> Response:
            return Response("<Response><Say>busy</Say><Hangup/></Response>", media_type="application/xml")

        async def forbidden(_request: Request) -> Response:
            return Response("no", status_code=403)

        routes = [
            Route("/incoming", incoming, methods=["POST"]),
            Route("/busy", busy, methods=["POST"]),
            Route("/forbidden", forbidden, methods=["POST"]),
        ]
        async with twiml_server(routes) as base:
            result = await run_call(
                f"{base}/incoming",
                [Pause(0.1)],
                auth_token=AUTH_TOKEN,
                from_number="+15551230000",
                custom_parameters={"extra": "x"},
                ws_headers={"X-Test": "1"},
                tail=0.0,
            )
            await asyncio.wait_for(bridge.done, 5)
            with pytest.raises(CallSetupError, match="no <Connect><Stream>"):
                await run_call(f"{base}/busy", [Pause(0.1)])
            with pytest.raises(CallSetupError) as refused:
                await run_call(f"{base}/forbidden", [Pause(0.1)])
            assert refused.value.status == 403

    assert seen["valid"] is True
    form = seen["form"]
    assert form["CallSid"] == result.call_sid and form["From"] == form["Caller"] == "+15551230000"
    assert form["CallStatus"] == "ringing" and form["Direction"] == "inbound" and form["ApiVersion"] == "2010-04-01"
    assert form["AccountSid"] == bridge.start["accountSid"]
    assert bridge.errors == []
    assert bridge.start["customParameters"] == {"callToken": "tok-1", "extra": "x"}
    assert bridge.start["callSid"] == result.call_sid
    headers = bridge.handshake_headers
    assert headers is not None and headers["X-Test"] == "1"
    assert headers["X-Twilio-Signature"] == RequestValidator(AUTH_TOKEN).compute_signature(ws_url, {})
    assert bridge.messages[-1]["event"] == "stop"


def test_parse_twiml_rejects_one_way_stream() -> None:
    twiml = '<Response><Connect><Stream url="wss://x/m"><Parameter name="a" value="1"/></Stream></Connect></Response>'
    url, params = parse_twiml(twiml)
    assert (url, params) == ("wss://x/m", {"a": "1"})
    with pytest.raises(CallSetupError, match="one-way"):
        parse_twiml('<Response><Start><Stream url="wss://x/m"/></Start></Response>')
    with pytest.raises(CallSetupError, match="not return XML"):
        parse_twiml("hello")


# --------------------------------------------------------------------------- wav helpers


def _write(path: Path, data: bytes, *, rate: int, width: int, channels: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)


def test_load_wav_converts_rate_width_and_channels(tmp_path: Path) -> None:
    t = np.arange(16000) / 16000
    tone = (10000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    stereo = np.stack([tone, tone], axis=1).tobytes()
    _write(tmp_path / "s16k.wav", stereo, rate=16000, width=2, channels=2)
    out = load_wav(tmp_path / "s16k.wav")
    assert out.dtype == np.int16 and len(out) == 8000
    expected = (10000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000))
    assert np.abs(out[200:-200] - expected[200:-200]).max() < 300

    u8 = (np.round(tone[::2] / 256) + 128).astype(np.uint8).tobytes()
    _write(tmp_path / "u8.wav", u8, rate=8000, width=1, channels=1)
    assert np.abs(load_wav(tmp_path / "u8.wav") - expected).max() < 300

    save_wav(tmp_path / "back.wav", out)
    assert np.array_equal(load_wav(tmp_path / "back.wav"), out)


async def test_linger_waits_for_the_echo_still_on_the_wire_at_hang_up() -> None:
    """The fake echoes 200 ms late: hanging up at once loses the last echoes, lingering keeps them all."""
    goodbye = speech("vm-goodbye")
    quick = await call(FakeBridge(echo_delay=0.2), [Say(goodbye, "goodbye")], tail=0.0)
    bridge = FakeBridge(echo_delay=0.2)
    patient = await call(bridge, [Say(goodbye, "goodbye")], tail=0.0, linger=1.0)
    loud_bytes = 160 * len(bridge.marks_sent)  # one mark per echoed (loud) frame
    assert patient.media_bytes_received == loud_bytes, "every echo came back before the stop"
    assert quick.media_bytes_received <= loud_bytes - 5 * 160, "without linger, the last ~200 ms of echo is lost"
    assert len(patient.sent) == len(quick.sent), "lingering sends nothing more"
