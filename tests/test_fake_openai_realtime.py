"""The fake OpenAI Realtime (GA) server, driven by the clients it stands in front of.

Why: later tests of the ``openai.realtime`` stage trust this fake to behave like the
real API. So it is exercised here by (a) the real ``openai`` SDK's GA realtime client,
whose typed event parser rejects nothing but names everything it knows, and (b)
pipecat's ``OpenAIRealtimeLLMService``, the thing the stage wraps — with real recorded
speech, in 24 kHz PCM and in μ-law, through server VAD, barge-in, truncation, tools and
the failure modes. Every wait is on an event (a server event the fake sent, a client
event it received, or a frame pipecat pushed), never a blind sleep.
"""

from __future__ import annotations

import asyncio
import base64
import json
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from conftest import speech
from fakes.openai_realtime import (
    FakeOpenAIRealtime,
    FakeRealtimeSession,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from openai import AsyncOpenAI
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    LLMRunFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.realtime import events as rt
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

from agent_voice_bridge.audio import mulaw
from agent_voice_bridge.audio.resampler import PolyphaseResampler

pytestmark = pytest.mark.timeout(60)

MODEL = "gpt-realtime"
KEY = "test-key"

RESPONSE_SEQUENCE = [
    "response.created", "response.output_item.added", "conversation.item.added",
    "response.content_part.added", "response.output_audio.done", "response.output_audio_transcript.done",
    "response.content_part.done", "response.output_item.done", "conversation.item.done", "response.done",
]
"""A GA audio response's skeleton, deltas left out (protocols.md D4)."""


# --------------------------------------------------------------------------- audio helpers


def pcm24k(name: str) -> bytes:
    """A real utterance, upsampled 8 → 24 kHz int16 by the project's resampler."""
    return PolyphaseResampler(8000, 24000).process(speech(name).tobytes())


def silence(ms: int, rate: int) -> bytes:
    return bytes(2 * rate * ms // 1000)


def dominant_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --------------------------------------------------------------------------- SDK helpers


@asynccontextmanager
async def sdk(fake: FakeOpenAIRealtime, key: str = KEY) -> AsyncIterator[Any]:
    """The openai SDK's GA realtime connection, pointed at the fake (protocols.md D6)."""
    client = AsyncOpenAI(api_key=key, websocket_base_url=fake.base_url)
    async with client.realtime.connect(model=MODEL) as conn:
        yield conn


async def until(conn: Any, last: str | Callable[[Any], bool], timeout: float = 10.0) -> list[Any]:
    """Read events up to and including the first one ``last`` matches."""
    match = (lambda e: e.type == last) if isinstance(last, str) else last
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await conn.recv()
            seen.append(event)
            if match(event):
                return seen


async def configure(conn: Any, *, fmt: dict[str, Any], turn_detection: dict[str, Any] | None,
                    **extra: Any) -> Any:
    await conn.session.update(session={
        "type": "realtime", "instructions": "Answer in one short sentence.",
        "audio": {"input": {"format": fmt, "turn_detection": turn_detection},
                  "output": {"format": fmt, "voice": "marin"}},
        **extra,
    })
    (updated,) = [e for e in await until(conn, "session.updated") if e.type == "session.updated"]
    return updated


async def append(conn: Any, wire: bytes, chunk: int) -> None:
    for piece in chunks(wire, chunk):
        await conn.input_audio_buffer.append(audio=base64.b64encode(piece).decode())


PCM = {"type": "audio/pcm", "rate": 24000}
PCMU = {"type": "audio/pcmu"}
SERVER_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


def skeleton(events: list[Any]) -> list[str]:
    return [t for t in types(events) if not t.endswith(".delta") and t != "rate_limits.updated"]


# --------------------------------------------------------------------------- (a) the openai SDK


async def test_session_created_then_update_reflects_the_effective_config() -> None:
    async with FakeOpenAIRealtime() as fake, sdk(fake) as conn:
        created = await conn.recv()
        assert created.type == "session.created"
        s = created.session
        assert (s.type, s.object, s.model) == ("realtime", "realtime.session", MODEL)
        assert s.audio.input.format.type == "audio/pcm" and s.audio.input.format.rate == 24000
        assert s.audio.input.turn_detection.type == "server_vad"
        assert s.audio.output.voice == "alloy" and s.instructions

        tools = [{"type": "function", "name": "hangup", "description": "End the call.",
                  "parameters": {"type": "object", "properties": {}}}]
        updated = await configure(conn, fmt=PCMU, turn_detection={"type": "semantic_vad", "eagerness": "high"},
                                  tools=tools, tool_choice="auto")
        s = updated.session
        assert s.instructions == "Answer in one short sentence."
        assert s.audio.input.format.type == s.audio.output.format.type == "audio/pcmu"
        assert s.audio.output.voice == "marin"
        assert s.audio.input.turn_detection.type == "semantic_vad"
        assert s.audio.input.turn_detection.create_response is True  # defaults filled in
        assert [t.name for t in s.tools] == ["hangup"]

        session = fake.session
        assert session.session_updates[0]["audio"]["output"]["voice"] == "marin"
        assert session.input_format == {"type": "audio/pcmu"} and session.input_rate == 8000
        assert session.config["tools"] == tools
        assert fake.handshakes[0].path == "/v1/realtime" and fake.handshakes[0].query == {"model": MODEL}
        assert fake.handshakes[0].authorization == f"Bearer {KEY}"


@pytest.mark.invalid_client_messages  # beta shapes, a missing session.type, a 16 kHz pcm rate
async def test_beta_shaped_session_update_is_rejected_like_the_ga_server() -> None:
    async with FakeOpenAIRealtime() as fake, sdk(fake) as conn:
        await until(conn, "session.created")
        beta = {"type": "session.update", "event_id": "evt_beta",
                "session": {"modalities": ["audio", "text"], "voice": "alloy", "input_audio_format": "g711_ulaw",
                            "output_audio_format": "g711_ulaw", "turn_detection": {"type": "server_vad"}}}
        await conn.send(beta)
        error = (await until(conn, "error"))[-1]
        assert error.error.code == "unknown_parameter"
        assert error.error.message == "Unknown parameter: 'session.modalities'."
        assert error.error.event_id == "evt_beta"

        await conn.send({"type": "session.update", "session": {"instructions": "x"}})  # no session.type
        error = (await until(conn, "error"))[-1]
        assert (error.error.code, error.error.param) == ("missing_required_parameter", "session.type")

        await conn.send({"type": "session.update", "session": {
            "type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}}})
        error = (await until(conn, "error"))[-1]
        assert (error.error.code, error.error.param) == ("invalid_value", "session.audio.output.format.rate")

        session = fake.session
        assert len(session.session_updates) == 3 and not session.sent("session.updated")
        assert session.config["audio"]["output"]["voice"] == "alloy"  # nothing applied


async def test_server_vad_turn_in_24k_pcm_gets_a_full_ga_response() -> None:
    utterance = pcm24k("hello-world")
    wire = utterance + silence(800, 24000)
    async with FakeOpenAIRealtime() as fake, sdk(fake) as conn:
        await until(conn, "session.created")
        await configure(conn, fmt=PCM, turn_detection=SERVER_VAD)
        await append(conn, wire, 960)  # 20 ms appends, faster than real time
        events = await until(conn, "response.done")

        names = types(events)
        turn = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
        assert skeleton(events)[:5] == turn
        assert skeleton(events)[5:] == RESPONSE_SEQUENCE
        started, stopped, committed, user_added = events[0], events[1], events[2], events[3]
        assert started.item_id == stopped.item_id == committed.item_id == user_added.item.id
        assert user_added.item.role == "user" and user_added.item.content[0].type == "input_audio"
        assert started.audio_start_ms == 0  # onset ~60 ms minus 300 ms prefix padding, clamped
        speech_ms = len(utterance) / 48
        assert speech_ms + 400 <= stopped.audio_end_ms <= speech_ms + 600  # includes the 500 ms silence

        audio = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
        assert names.count("response.output_audio.delta") == 38  # 1.5 s in 40 ms chunks
        assert len(audio) == 1.5 * 24000 * 2
        assert abs(dominant_hz(audio, 24000) - 440) < 5
        transcript = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
        done = events[-1].response
        assert done.status == "completed" and done.usage.total_tokens > 0
        assert done.output[0].content[0].transcript == transcript == fake.reply_transcript

        session = fake.session
        assert bytes(session.audio_in) == wire == bytes(session.audio_in_raw)
        assert session.responses_created[0].trigger == "turn_detected"
        assert session.audio_sent_ms[done.output[0].id] == pytest.approx(1500)


async def test_pcmu_both_ways_decodes_input_and_speaks_8k_mulaw() -> None:
    wire = mulaw.encode(speech("one-moment-please").tobytes() + silence(800, 8000))
    async with FakeOpenAIRealtime() as fake, sdk(fake) as conn:
        await until(conn, "session.created")
        await configure(conn, fmt=PCMU, turn_detection=SERVER_VAD)
        await append(conn, wire, 160)  # 20 ms of μ-law
        events = await until(conn, "response.done")
        assert "input_audio_buffer.speech_started" in types(events)

        reply = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
        assert len(reply) == 1.5 * 8000  # one byte per 8 kHz sample
        assert abs(dominant_hz(mulaw.decode(reply), 8000) - 440) < 10

        session = fake.session
        assert session.input_format == {"type": "audio/pcmu"}
        assert bytes(session.audio_in_raw) == wire
        assert bytes(session.audio_in) == mulaw.decode(wire)  # decoded to 8 kHz PCM
        assert session.responses_created[0].output_format == {"type": "audio/pcmu"}


async def test_manual_turns_greeting_and_commit_rules() -> None:
    async with FakeOpenAIRealtime(pace=0) as fake, sdk(fake) as conn:
        await until(conn, "session.created")
        await configure(conn, fmt=PCM, turn_detection=None)

        await conn.input_audio_buffer.commit()
        error = (await until(conn, "error"))[-1]
        assert error.error.code == "input_audio_buffer_commit_empty"

        # greeting: a user text item, then response.create with per-response instructions
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Greet the caller."}]})
        await conn.response.create(response={"instructions": "Say hello."})
        events = await until(conn, "response.done")
        assert skeleton(events)[:2] == ["conversation.item.added", "conversation.item.done"]
        assert skeleton(events)[2:] == RESPONSE_SEQUENCE

        # manual turn: append + commit commits, and nothing answers until response.create
        await append(conn, pcm24k("vm-goodbye"), 4800)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await until(conn, "response.done")
        assert skeleton(events)[:3] == ["input_audio_buffer.committed", "conversation.item.added",
                                        "conversation.item.done"]
        assert "input_audio_buffer.speech_started" not in types(events)

        session = fake.session
        assert [(r.trigger, r.instructions) for r in session.responses_created] == [
            ("client", "Say hello."), ("client", None)]


async def test_truncate_is_validated_like_the_real_api() -> None:
    async with FakeOpenAIRealtime(pace=0) as fake, sdk(fake) as conn:
        await until(conn, "session.created")
        await configure(conn, fmt=PCM, turn_detection=None)
        await conn.response.create()
        events = await until(conn, "response.done")
        item_id = events[-1].response.output[0].id

        await conn.send({"type": "conversation.item.truncate", "event_id": "evt_t1", "item_id": "item_nope",
                         "content_index": 0, "audio_end_ms": 100})
        error = (await until(conn, "error"))[-1]
        assert (error.error.code, error.error.event_id) == ("item_truncate_invalid_item_id", "evt_t1")

        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=2000)
        error = (await until(conn, "error"))[-1]
        assert error.error.code == "invalid_value"
        assert error.error.message == "Audio content of 1500ms is already shorter than 2000ms"

        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=700)
        truncated = (await until(conn, "conversation.item.truncated"))[-1]
        assert (truncated.item_id, truncated.content_index, truncated.audio_end_ms) == (item_id, 0, 700)

        # the item is now 700 ms long: truncating past that is refused
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=701)
        error = (await until(conn, "error"))[-1]
        assert error.error.message == "Audio content of 700ms is already shorter than 701ms"

        # assistant audio exists now, so the voice is fixed
        await conn.session.update(session={"type": "realtime", "audio": {"output": {"voice": "cedar"}}})
        error = (await until(conn, "error"))[-1]
        assert error.error.code == "cannot_update_voice"

        session = fake.session
        assert [(t.item_id, t.audio_end_ms) for t in session.truncations] == [(item_id, 700)]
        assert [e["code"] for e in session.truncate_errors] == ["item_truncate_invalid_item_id", "invalid_value",
                                                               "invalid_value"]


async def test_response_cancel_needs_a_running_response() -> None:
    async with FakeOpenAIRealtime() as fake, sdk(fake) as conn:
        await until(conn, "session.created")
        await configure(conn, fmt=PCM, turn_detection=None)
        await conn.response.cancel()
        error = (await until(conn, "error"))[-1]
        assert error.error.code == "response_cancel_not_active"

        await conn.response.create()
        await until(conn, "response.output_audio.delta")
        await conn.response.cancel()
        events = await until(conn, "response.done")
        done = events[-1].response
        assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
        assert done.output[0].status == "incomplete"

        session = fake.session
        (cancel,) = session.cancels
        assert cancel.reason == "client_cancelled" and 0 < cancel.audio_ms_sent < 1500


async def test_barge_in_emits_speech_started_and_cancels_the_response() -> None:
    async with FakeOpenAIRealtime() as fake, sdk(fake) as conn:
        await until(conn, "session.created")
        await configure(conn, fmt=PCM, turn_detection=SERVER_VAD)
        await append(conn, pcm24k("hello-world") + silence(600, 24000), 960)
        first = await until(conn, "response.output_audio.delta")
        first_response = next(e for e in first if e.type == "response.created").response.id

        # the caller talks over the reply
        await append(conn, pcm24k("vm-goodbye") + silence(600, 24000), 960)
        events = await until(conn, lambda e: e.type == "response.done" and e.response.id == first_response)
        barge = next(e for e in events if e.type == "input_audio_buffer.speech_started")
        done = events[-1].response
        assert done.status == "cancelled" and done.status_details.reason == "turn_detected"
        assert types(events).index("input_audio_buffer.speech_started") < types(events).index("response.done")

        # the interrupting turn is answered in full
        events = await until(conn, "response.done")
        assert events[-1].response.status == "completed"
        assert barge.item_id in [e.item_id for e in events if e.type == "input_audio_buffer.committed"]

        session = fake.session
        (cancel,) = session.cancels
        assert cancel.reason == "turn_detected" and cancel.response_id == first_response
        assert 0 < cancel.audio_ms_sent < 1500 == session.audio_sent_ms[events[-1].response.output[0].id]
        assert [r.trigger for r in session.responses_created] == ["turn_detected", "turn_detected"]


async def test_tool_call_round_trip() -> None:
    tool_call = {"name": "lookup_order", "arguments": {"order_id": "A-17"}}
    tools = [{"type": "function", "name": "lookup_order", "description": "Find an order.",
              "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}}]
    async with FakeOpenAIRealtime(tool_call=tool_call, pace=0) as fake, sdk(fake) as conn:
        await until(conn, "session.created")
        await configure(conn, fmt=PCM, turn_detection=None, tools=tools)
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Where is A-17?"}]})
        await conn.response.create()
        events = await until(conn, "response.done")
        call = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert (call.name, json.loads(call.arguments)) == ("lookup_order", {"order_id": "A-17"})
        added = next(e for e in events if e.type == "response.output_item.added")
        assert added.item.type == "function_call" and added.item.call_id == call.call_id
        assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == call.arguments
        assert "response.output_audio.delta" not in types(events)

        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call.call_id,
                                                  "output": json.dumps({"status": "shipped"})})
        await conn.response.create()
        events = await until(conn, "response.done")
        assert "response.output_audio.delta" in types(events)

        # an output for a call the server never made is refused
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": "call_unknown",
                                                  "output": "{}"})
        error = (await until(conn, "error"))[-1]
        assert error.error.param == "item.call_id"

        (out,) = fake.session.function_outputs
        assert (out.call_id, out.name, json.loads(out.output)) == (call.call_id, "lookup_order", {"status": "shipped"})
        assert [r.kind for r in fake.session.responses_created] == ["function_call", "audio"]


async def test_wrong_key_gets_an_error_event_then_close_3000() -> None:
    async with FakeOpenAIRealtime() as fake, sdk(fake, key="sk-wrong-key-1234") as conn:
        error = (await until(conn, "error"))[-1]
        assert (error.error.type, error.error.code) == ("invalid_request_error", "invalid_api_key")
        assert "sk-" in error.error.message and "wrong" not in error.error.message  # masked
        with pytest.raises(Exception) as closed:
            await conn.recv()
        rcvd = getattr(closed.value, "rcvd", None) or getattr(closed.value.__cause__, "rcvd", None)
        assert (rcvd.code, rcvd.reason) == (3000, "invalid_request_error.invalid_api_key")
        assert fake.session.close_sent == (3000, "invalid_request_error.invalid_api_key")
        assert not fake.session.sent("session.created")


async def test_refuse_fails_the_handshake_with_401() -> None:
    async with FakeOpenAIRealtime(fail="refuse") as fake:
        with pytest.raises(Exception) as refused:
            async with sdk(fake):
                pass
        chain = [refused.value, refused.value.__cause__, refused.value.__context__]
        statuses = [getattr(getattr(e, "response", None), "status_code", None) for e in chain]
        assert 401 in statuses, chain
        assert [h.status for h in fake.handshakes] == [401] and not fake.sessions


async def test_drop_mid_response_closes_1011_mid_audio() -> None:
    async with FakeOpenAIRealtime(fail="drop_mid_response", pace=0) as fake, sdk(fake) as conn:
        await until(conn, "session.created")
        await configure(conn, fmt=PCM, turn_detection=None)
        await conn.response.create()
        seen: list[Any] = []
        with pytest.raises(Exception) as dropped:
            async for event in conn:
                seen.append(event)
        rcvd = getattr(dropped.value, "rcvd", None) or getattr(dropped.value.__cause__, "rcvd", None)
        assert rcvd.code == 1011
        assert types(seen).count("response.output_audio.delta") == 19  # half of 38, then the close
        assert "response.done" not in types(seen)
        assert fake.session.close_sent == (1011, "Internal server error")


def test_fake_g711_codecs_are_the_standard_ones() -> None:
    """The fake decodes with its own tables; they must equal the reference decoders."""
    every = bytes(range(256))
    assert ulaw_decode(every) == mulaw.decode(every)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    assert ulaw_decode(every) == audioop.ulaw2lin(every, 2)
    assert alaw_decode(every) == audioop.alaw2lin(every, 2)
    # encoders: every code survives code → PCM → code (0x7F/0xFF are both μ-law zero)
    assert ulaw_encode(ulaw_decode(every)) == bytes(b if b != 0x7F else 0xFF for b in every)
    assert alaw_encode(alaw_decode(every)) == every
    # over every int16: A-law equals audioop; μ-law is the textbook 16-bit encoder, which
    # differs from audioop's 14-bit one on exactly 381 inputs (protocols.md E)
    pcm = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert alaw_encode(pcm) == audioop.lin2alaw(pcm, 2)
    differ = np.frombuffer(ulaw_encode(pcm), np.uint8) != np.frombuffer(audioop.lin2ulaw(pcm, 2), np.uint8)
    assert int(differ.sum()) == 381


# --------------------------------------------------------------------------- (b) pipecat's service


class Collector(FrameProcessor):
    """Keeps what reaches it and lets a test wait for a frame type."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self._arrived = asyncio.Condition()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            async with self._arrived:
                self._arrived.notify_all()
        await self.push_frame(frame, direction)

    def of(self, kind: type) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]

    async def wait_for(self, kind: type, count: int = 1, timeout: float = 10.0) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.of(kind)) >= count), timeout)


@asynccontextmanager
async def running(processors: list[FrameProcessor]) -> AsyncIterator[PipelineWorker]:
    """The processors as a running pipeline; EndFrame and join on exit."""
    worker = PipelineWorker(Pipeline(processors), cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker: Any, _frame: Any) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield worker
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(task, 15)


def pipecat_service(fake: FakeOpenAIRealtime, fmt: type[rt.AudioFormat] = rt.PCMAudioFormat,
                    tools: list[dict[str, Any]] | None = None) -> OpenAIRealtimeLLMService:
    """How to point pipecat's service at the fake: ``base_url`` is the full ``…/v1/realtime``."""
    properties = rt.SessionProperties(
        audio=rt.AudioConfiguration(
            input=rt.AudioInput(format=fmt(), turn_detection=rt.TurnDetection(silence_duration_ms=500)),
            output=rt.AudioOutput(format=fmt(), voice="marin"),
        ),
        tools=tools,
    )
    return OpenAIRealtimeLLMService(
        api_key=KEY,
        base_url=fake.url,
        settings=OpenAIRealtimeLLMService.Settings(
            model=MODEL, system_instruction="You answer the phone.", session_properties=properties),
    )


async def feed(worker: PipelineWorker, pcm: bytes, rate: int = 24000, ms: int = 20) -> None:
    for piece in chunks(pcm, 2 * rate * ms // 1000):
        await worker.queue_frame(InputAudioRawFrame(audio=piece, sample_rate=rate, num_channels=1))


async def test_pipecat_service_speaks_and_barges_in_against_the_fake() -> None:
    first, second = pcm24k("all-circuits-busy-now") + silence(700, 24000), pcm24k("vm-goodbye")
    async with FakeOpenAIRealtime() as fake:
        llm, sink = pipecat_service(fake), Collector()
        async with running([llm, sink]) as worker:
            session = await fake.wait_for_session()
            await session.wait_server_event("session.updated")
            update = session.session_updates[0]
            assert update["type"] == "realtime" and update["model"] == MODEL
            assert update["instructions"] == "You answer the phone."
            assert update["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
            assert update["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}
            assert update["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500

            await feed(worker, first)
            await session.wait_server_event("response.output_audio.delta", count=3)
            await sink.wait_for(TTSAudioRawFrame)
            assert sink.of(TTSAudioRawFrame)[0].sample_rate == 24000
            assert sink.of(TTSAudioRawFrame)[0].audio == base64.b64decode(
                session.sent("response.output_audio.delta")[0]["delta"])

            # barge-in: the fake cancels (turn_detected) and pipecat truncates what it played
            await feed(worker, second)
            await session.wait_server_event("input_audio_buffer.speech_started", count=2)
            await session.wait_for(lambda: bool(session.cancels), what="the cancel")
            truncate = await session.wait_client_event("conversation.item.truncate")
            await session.wait_for(lambda: bool(session.truncations or session.truncate_errors), what="truncate")

        assert bytes(session.audio_in).startswith(first + second[: len(session.audio_in) - len(first)])
        assert session.input_rate == 24000 and len(session.audio_in) >= len(first)
        (cancel,) = session.cancels
        assert cancel.reason == "turn_detected"
        (truncation,) = session.truncations
        assert truncation.item_id == cancel.item_id == truncate["item_id"]
        # pipecat sends min(wall-clock since first delta, bytes received / 48 per ms)
        assert 0 <= truncation.audio_end_ms <= truncation.item_audio_ms
        assert not session.errors


async def test_pipecat_ignores_a_pcmu_format_and_still_sends_24k_pcm() -> None:
    """Documents a pipecat limit: the format it declares is not the audio it sends or expects."""
    second = pcm24k("hello-world")[: 24000 * 2]
    async with FakeOpenAIRealtime(pace=0) as fake:
        llm, sink = pipecat_service(fake, fmt=rt.PCMUAudioFormat), Collector()
        pair = LLMContextAggregatorPair(LLMContext([{"role": "user", "content": "Greet the caller."}]))
        async with running([pair.user(), llm, sink, pair.assistant()]) as worker:
            session = await fake.wait_for_session()
            await worker.queue_frame(LLMRunFrame())  # a greeting, so there is reply audio
            await session.wait_server_event("response.done")
            await sink.wait_for(TTSAudioRawFrame)
            assert session.input_format == session.output_format == {"type": "audio/pcmu"}
            await feed(worker, second)
            await session.wait_for(lambda: len(session.audio_in_raw) >= len(second), what="a second of audio")

        # one second of caller audio arrives as 48,000 wire bytes (24 kHz int16), not 8,000 of μ-law
        assert bytes(session.audio_in_raw) == second
        # ...so the server hears PCM as μ-law: loud noise (a PCM zero byte is μ-law full scale)
        assert session.sent("input_audio_buffer.speech_started")
        # and the μ-law reply (8,000 bytes a second) is handed on labelled as 24 kHz PCM
        frames = sink.of(TTSAudioRawFrame)
        assert {f.sample_rate for f in frames} == {24000}
        assert sum(len(f.audio) for f in frames) == 1.5 * 8000


async def test_pipecat_tool_call_round_trip() -> None:
    tool = {"type": "function", "name": "lookup_order", "description": "Find an order.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                           "required": ["order_id"]}}
    calls: list[dict[str, Any]] = []

    async def lookup_order(params: FunctionCallParams) -> None:
        calls.append(dict(params.arguments))
        await params.result_callback({"status": "shipped"})

    async with FakeOpenAIRealtime(tool_call={"name": "lookup_order", "arguments": {"order_id": "A-17"}},
                                  pace=0) as fake:
        llm, sink = pipecat_service(fake, tools=[tool]), Collector()
        llm.register_function("lookup_order", lookup_order)
        context = LLMContext([{"role": "user", "content": "Where is order A-17?"}])
        pair = LLMContextAggregatorPair(context)
        async with running([pair.user(), llm, sink, pair.assistant()]) as worker:
            await worker.queue_frame(LLMRunFrame())
            session = await fake.wait_for_session()
            await session.wait_for(lambda: len(session.responses_created) >= 2
                                   and session.responses_created[1].done.is_set(), timeout=15,
                                   what="the spoken answer after the tool")
            await sink.wait_for(FunctionCallResultFrame)

        assert calls == [{"order_id": "A-17"}]
        (out,) = session.function_outputs
        assert out.call_id == session.responses_created[0].call_id
        assert json.loads(out.output) == {"status": "shipped"}
        assert [r.kind for r in session.responses_created] == ["function_call", "audio"]
        assert session.config["tools"][0]["name"] == "lookup_order"
        user_items = [e["item"] for e in session.client_events("conversation.item.create")
                      if e["item"].get("role") == "user"]
        assert user_items and user_items[0]["content"][0]["text"] == "Where is order A-17?"
        assert not session.errors


@pytest.mark.parametrize("fmt", [PCM, PCMU])
async def test_fake_session_helpers_wait_on_events(fmt: dict[str, Any]) -> None:
    """``FakeRealtimeSession.wait_*`` wake on what the fake records (no polling in tests)."""
    async with FakeOpenAIRealtime(pace=0) as fake, sdk(fake) as conn:
        session: FakeRealtimeSession = await fake.wait_for_session()
        await session.wait_server_event("session.created")
        await configure(conn, fmt=fmt, turn_detection=None)
        await conn.response.create()
        record = (await session.wait_client_event("response.create"), session.responses_created)
        await session.wait_server_event("response.done")
        assert record[1][0].status == "completed" and record[1][0].done.is_set()
        await until(conn, "response.done")  # drain: an unread client queue stalls the closing handshake
        with pytest.raises(AssertionError, match="timed out"):
            await session.wait_server_event("response.done", count=2, timeout=0.2)
