"""The fake Gemini Live server, driven by the real clients it stands in for.

Why: the ``gemini.live`` stage will be tested against ``tests/fakes/gemini_live.py``
instead of Google. That is only worth something if the real google-genai SDK (the
version in this venv) and pipecat's ``GeminiLiveLLMService`` talk to the fake exactly
as they would to Google: TLS via ``base_url``, the key header, the snake_case quirks,
16 kHz audio in, 24 kHz audio out, barge-in, tool calls, goAway + resumption, close
codes. These tests pin that down with real human speech sent in real time (20 ms
chunks, like a phone line), and wait on events — never on blind sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from google import genai
from google.genai import errors, types
from google.genai.types import HttpOptions
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.google.gemini_live.llm import GeminiLiveLLMService, GeminiVADParams
from pipecat.workers.runner import WorkerRunner

from agent_voice_bridge.audio.resampler import PolyphaseResampler
from conftest import speech
from fakes.gemini_live import OUTPUT_MIME, OUTPUT_RATE, FakeGeminiLive, decode_proto_bytes, normalise_keys, tone

MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"
VOICE = "Puck"
RATE = 16000
CHUNK_MS = 20
CHUNK_BYTES = RATE * CHUNK_MS // 1000 * 2


def speech_16k(name: str) -> bytes:
    """A real utterance (8 kHz fixture) upsampled to Gemini's native 16 kHz input rate."""
    return PolyphaseResampler(8000, RATE).process(speech(name).tobytes())


def sdk_client(fake: FakeGeminiLive, api_key: str = "test-key") -> genai.Client:
    """The supported way to aim google-genai at the fake (protocols.md C5): https base_url + ssl ctx."""
    return genai.Client(
        api_key=api_key,
        http_options=types.HttpOptions(
            base_url=fake.base_url, api_version="v1beta", async_client_args={"ssl": fake.client_ssl}
        ),
    )


def live_config(**extra: Any) -> types.LiveConnectConfig:
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=VOICE))
        ),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(handle=extra.pop("handle", None)),
        **extra,
    )


class Mic:
    """A phone line into a Live session: 20 ms chunks every 20 ms, silence when nobody talks.

    Why continuous: Twilio never stops sending, and the server's end-of-speech detection
    needs the trailing silence to arrive as audio. ``say()`` queues an utterance;
    ``await mic.said()`` returns once its last chunk is on the wire.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.sent = bytearray()
        self._queue = bytearray()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def say(self, pcm: bytes) -> None:
        self._queue.extend(pcm)
        self._drained.clear()

    async def said(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._drained.wait(), timeout)

    async def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while True:
            if self._queue:
                chunk = bytes(self._queue[:CHUNK_BYTES]).ljust(CHUNK_BYTES, b"\0")
                del self._queue[:CHUNK_BYTES]
                if not self._queue:
                    self._drained.set()
            else:
                chunk = bytes(CHUNK_BYTES)
            await self.session.send_realtime_input(audio=types.Blob(data=chunk, mime_type=f"audio/pcm;rate={RATE}"))
            self.sent.extend(chunk)
            n += 1
            await asyncio.sleep(max(0.0, start + n * CHUNK_MS / 1000 - time.monotonic()))

    async def __aenter__(self) -> Mic:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Receiver:
    """Reads a Live session in the background and records every message.

    ``session.receive()`` ends after each ``turnComplete`` (protocols.md C1), so it is
    called in a loop; a closed socket surfaces as ``errors.APIError`` and is kept in
    ``error``.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.messages: list[types.LiveServerMessage] = []
        self.arrived: list[float] = []
        self.error: errors.APIError | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        try:
            while True:
                async for message in self.session.receive():
                    self.messages.append(message)
                    self.arrived.append(time.monotonic())
                    self._changed.set()
        except errors.APIError as e:
            self.error = e
            self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def content(self, field: str) -> list[tuple[int, Any]]:
        """``(index, value)`` of every message whose server_content has ``field`` set."""
        out = []
        for i, m in enumerate(self.messages):
            value = getattr(m.server_content, field, None) if m.server_content else None
            if value:
                out.append((i, value))
        return out

    def turns_complete(self) -> int:
        return len(self.content("turn_complete"))

    def audio(self, start: int = 0, stop: int | None = None) -> bytes:
        return b"".join(m.data or b"" for m in self.messages[start:stop])

    def audio_mimes(self) -> set[str]:
        return {
            part.inline_data.mime_type
            for m in self.messages
            if m.server_content and m.server_content.model_turn
            for part in m.server_content.model_turn.parts or []
            if part.inline_data
        }

    def handles(self) -> list[str]:
        return [
            m.session_resumption_update.new_handle
            for m in self.messages
            if m.session_resumption_update and m.session_resumption_update.new_handle
        ]

    async def __aenter__(self) -> Receiver:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# --------------------------------------------------------------------------- wire-format units


def test_normalise_keys_renames_fields_but_not_user_data() -> None:
    """The SDK's snake_case must be camelised; tool args, responses and schema property names must not."""
    schema = {"properties": {"call_reason": {"type": "STRING"}}}
    raw = {
        "tool_response": {"function_responses": [{"id": "fc1", "response": {"call_sid": "CA1", "will_do": 1}}]},
        "setup": {"tools": [{"function_declarations": [{"parameters": schema}]}],
                  "realtimeInputConfig": {"automatic_activity_detection": {"silence_duration_ms": 500}}},
    }
    assert normalise_keys(raw) == {
        "toolResponse": {"functionResponses": [{"id": "fc1", "response": {"call_sid": "CA1", "will_do": 1}}]},
        "setup": {"tools": [{"functionDeclarations": [{"parameters": schema}]}],
                  "realtimeInputConfig": {"automaticActivityDetection": {"silenceDurationMs": 500}}},
    }


def test_proto_bytes_accept_standard_and_urlsafe_base64() -> None:
    """google-genai 2.x sends Blob.data as URL-safe base64 (pydantic); proto JSON accepts every variant."""
    data = bytes(range(256))
    for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data), base64.urlsafe_b64encode(data).rstrip(b"=")):
        assert decode_proto_bytes(encoded.decode()) == data


async def test_raw_client_v1_query_key_camel_case_and_media_chunks() -> None:
    """A raw client (or google-genai 3.x's default api v1): ``?key=``, camelCase, deprecated mediaChunks."""
    async with FakeGeminiLive() as fake:
        url = fake.ws_url.replace(".v1beta.", ".v1.") + "?key=test-key"
        async with websockets.connect(url, ssl=fake.client_ssl) as ws:
            await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
            ready = await ws.recv()
            assert isinstance(ready, bytes) and json.loads(ready) == {"setupComplete": {}}
            pcm = speech_16k("hello-world")[:3200]
            chunk = {"data": base64.b64encode(pcm).decode(), "mimeType": "audio/pcm;rate=16000"}
            await ws.send(json.dumps({"realtimeInput": {"mediaChunks": [chunk]}}))
            turn = {"role": "user", "parts": [{"text": "hi"}]}
            await ws.send(json.dumps({"clientContent": {"turns": [turn], "turnComplete": True}}))
            kinds = []
            while "turnComplete" not in kinds:
                frame = await ws.recv()
                assert isinstance(frame, bytes), "server JSON travels in binary frames"
                message = json.loads(frame)
                kinds.extend(message.get("serverContent", message))
        s = fake.sessions[0]
        assert s.api_version == "v1" and s.api_key == "test-key" and s.audio_in == pcm and s.audio_rates == {RATE}
        assert kinds[0] == "outputTranscription" and kinds[-2:] == ["generationComplete", "turnComplete"]
        assert "sessionResumptionUpdate" not in [k for m in s.sent for k in m], "only when setup asks for it"
        assert s.quirks == set() and s.protocol_errors == []

        with pytest.raises(websockets.InvalidStatus) as wrong_path:
            async with websockets.connect(fake.ws_url.replace("BidiGenerateContent", "Nope"), ssl=fake.client_ssl):
                pass
        assert wrong_path.value.response.status_code == 404


# --------------------------------------------------------------------------- google-genai SDK




async def test_setup_speech_in_and_reply_out() -> None:
    """Setup recorded as sent, real speech arrives intact at 16 kHz, the reply is 24 kHz audio."""
    async with FakeGeminiLive() as fake:
        client = sdk_client(fake)
        async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
            async with Receiver(session) as rx, Mic(session) as mic:
                mic.say(speech_16k("hello-world"))
                await rx.wait_for(lambda: rx.turns_complete() >= 1)
                sent = bytes(mic.sent)

        s = fake.sessions[0]
        assert s.api_version == "v1beta" and s.method == "BidiGenerateContent"
        assert s.headers["x-goog-api-key"] == "test-key"
        assert s.model == f"models/{MODEL}" and s.voice == VOICE
        assert s.setup["inputAudioTranscription"] == {} and "sessionResumption" in s.setup
        assert s.automatic_activity_detection
        # The SDK's quirk reached the wire and the fake still understood it.
        assert any(isinstance(f, str) and f.startswith('{"realtime_input"') for f in s.raw_frames)
        assert s.audio_rates == {RATE}
        assert s.audio_in[: len(sent)] == sent[: len(s.audio_in)] and len(s.audio_in) >= len(sent) - CHUNK_BYTES
        assert [e for e, _ in s.vad_events[:2]] == ["start", "end"]
        assert s.replies[0].trigger == "speech" and s.replies[0].completed and not s.replies[0].interrupted
        assert s.protocol_errors == []

        assert rx.audio_mimes() == {OUTPUT_MIME}
        assert len(rx.audio()) == len(fake.reply_pcm) == int(1.5 * OUTPUT_RATE) * 2
        assert rx.content("input_transcription")[0][1].text == "hello world"
        assert rx.content("output_transcription")[0][1].text == fake.script.reply_text
        (gen_at, _), = rx.content("generation_complete")
        (done_at, _), = rx.content("turn_complete")
        assert gen_at < done_at and rx.messages[done_at].usage_metadata.total_token_count > 0


async def test_barge_in_interrupts_the_reply() -> None:
    """Caller speech while the model talks: ``interrupted`` then ``turnComplete``, no more audio; then a new turn."""
    async with FakeGeminiLive(reply_audio=tone(4.0)) as fake:
        async with sdk_client(fake).aio.live.connect(model=MODEL, config=live_config()) as session:
            async with Receiver(session) as rx, Mic(session) as mic:
                mic.say(speech_16k("one-moment-please"))
                await rx.wait_for(lambda: len(rx.audio()) > 0)
                mic.say(speech_16k("vm-goodbye"))
                await rx.wait_for(lambda: rx.turns_complete() >= 2)

        s = fake.sessions[0]
        first, second = s.replies[:2]
        assert first.interrupted and first.completed
        assert 0 < first.interrupted_at_ms < 4000 and s.interrupted_at_ms == first.interrupted_at_ms
        assert second.trigger == "speech" and second.completed and not second.interrupted

        (int_at, _), = rx.content("interrupted")
        done = [i for i, _ in rx.content("turn_complete")]
        assert done[0] == int_at + 1, "interrupted is followed directly by turnComplete"
        assert not [i for i, _ in rx.content("generation_complete") if i < int_at], "no generationComplete on a cut turn"
        assert len(rx.audio(0, int_at)) / 2 / OUTPUT_RATE * 1000 == pytest.approx(first.interrupted_at_ms)


async def test_tool_call_round_trip() -> None:
    """toolCall first, silence until the matching toolResponse, then the spoken answer."""
    hangup = types.FunctionDeclaration(
        name="hangup",
        description="End the call.",
        parameters=types.Schema(type=types.Type.OBJECT, properties={"call_reason": types.Schema(type=types.Type.STRING)}),
    )
    async with FakeGeminiLive(tool_call={"name": "hangup", "args": {"call_reason": "done"}}) as fake:
        config = live_config(tools=[types.Tool(function_declarations=[hangup])])
        async with sdk_client(fake).aio.live.connect(model=MODEL, config=config) as session:
            async with Receiver(session) as rx, Mic(session) as mic:
                mic.say(speech_16k("vm-goodbye"))
                await rx.wait_for(lambda: any(m.tool_call for m in rx.messages))
                call_at = next(i for i, m in enumerate(rx.messages) if m.tool_call)
                call = rx.messages[call_at].tool_call.function_calls[0]
                assert (call.id, call.name, call.args) == ("fc1", "hangup", {"call_reason": "done"})
                assert rx.audio() == b""
                await session.send_tool_response(
                    function_responses=types.FunctionResponse(id=call.id, name=call.name, response={"result": "ok"})
                )
                await rx.wait_for(lambda: rx.turns_complete() >= 1)

        s = fake.sessions[0]
        declaration = s.setup["tools"][0]["functionDeclarations"][0]
        assert declaration["name"] == "hangup" and "call_reason" in declaration["parameters"]["properties"]
        assert s.tool_responses == [{"functionResponses": [{"id": "fc1", "name": "hangup", "response": {"result": "ok"}}]}]
        assert s.replies[0].tool_call["id"] == "fc1" and s.replies[0].tool_response["response"] == {"result": "ok"}
        assert len(rx.audio(call_at)) == len(fake.reply_pcm)


async def test_go_away_then_resume_with_the_handle() -> None:
    """goAway, the close it announces, and a new connection that resumes the same conversation."""
    async with FakeGeminiLive(go_away_after_turns=1) as fake:
        client = sdk_client(fake)
        greet = types.Content(role="user", parts=[types.Part(text="Greet the caller.")])
        async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
            async with Receiver(session) as rx:
                await session.send_client_content(turns=greet, turn_complete=True)
                await rx.wait_for(lambda: rx.error is not None)
        go_away_at = next(t for m, t in zip(rx.messages, rx.arrived) if m.go_away)
        go_away = next(m.go_away for m in rx.messages if m.go_away)
        assert go_away.time_left == "1s"
        await fake.wait_for(lambda: fake.sessions[0].closed)
        assert rx.error.code == 1011 and fake.sessions[0].closed_code == 1011
        assert time.monotonic() - go_away_at >= 0.9
        handle = rx.handles()[-1]
        assert handle in fake.sessions[0].issued_handles

        async with client.aio.live.connect(model=MODEL, config=live_config(handle=handle)) as session:
            async with Receiver(session) as rx2:
                await session.send_client_content(turns=greet, turn_complete=True)
                await rx2.wait_for(lambda: rx2.turns_complete() >= 1)
        resumed = fake.sessions[1]
        assert resumed.resumption_handle == handle and resumed.resumed
        assert resumed.conversation_id == fake.sessions[0].conversation_id
        assert resumed.turns_at_start == 1 and resumed.replies[0].turn == 2

        with pytest.raises(errors.APIError) as refused:
            async with client.aio.live.connect(model=MODEL, config=live_config(handle="never-issued")):
                pass
        assert refused.value.code == 1008


@pytest.mark.parametrize("api_key, options", [("wrong-key", {}), ("test-key", {"fail": "refuse"})])
async def test_refused_session_raises_1008(api_key: str, options: dict[str, Any]) -> None:
    """A bad key (or ``fail="refuse"``) surfaces from ``connect`` as ``APIError`` with the close code."""
    async with FakeGeminiLive(**options) as fake:
        with pytest.raises(errors.APIError) as refused:
            async with sdk_client(fake, api_key).aio.live.connect(model=MODEL, config=live_config()):
                pass
        assert refused.value.code == 1008 and "API key not valid" in str(refused.value)
        await fake.wait_for(lambda: fake.sessions[0].closed)
        assert fake.sessions[0].closed_code == 1008 and not fake.sessions[0].setup


async def test_drop_after_setup_closes_1011_mid_reply() -> None:
    async with FakeGeminiLive(fail="drop_after_setup") as fake:
        async with sdk_client(fake).aio.live.connect(model=MODEL, config=live_config()) as session:
            async with Receiver(session) as rx:
                await session.send_client_content(turn_complete=True)
                await rx.wait_for(lambda: rx.error is not None)
        assert rx.error.code == 1011 and 0 < len(rx.audio()) < len(fake.reply_pcm)
        assert rx.turns_complete() == 0


# --------------------------------------------------------------------------- pipecat's GeminiLiveLLMService


class Collect(FrameProcessor):
    """Pipeline sink that keeps the bot's audio and wakes waiters."""

    def __init__(self) -> None:
        super().__init__()
        self.audio: list[OutputAudioRawFrame] = []
        self._changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame):
            self.audio.append(frame)
            self._changed.set()
        await self.push_frame(frame, direction)

    def audio_bytes(self) -> int:
        return sum(len(f.audio) for f in self.audio)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def gemini_service(fake: FakeGeminiLive, **settings: Any) -> GeminiLiveLLMService:
    """pipecat's service aimed at the fake: only ``http_options`` differ from production.

    The service hands ``http_options`` straight to ``genai.Client`` (after adding its
    ``x-goog-api-client`` header), so the SDK recipe applies unchanged.
    """
    return GeminiLiveLLMService(
        api_key="test-key",
        settings=GeminiLiveLLMService.Settings(voice=VOICE, **settings),
        system_instruction="You answer the phone.",
        http_options=HttpOptions(base_url=fake.base_url, api_version="v1beta", async_client_args={"ssl": fake.client_ssl}),
    )


class Running:
    """``[service, sink]`` running in a PipelineWorker, ended with an EndFrame on exit."""

    def __init__(self, service: GeminiLiveLLMService) -> None:
        self.sink = Collect()
        self.worker = PipelineWorker(Pipeline([service, self.sink]), cancel_on_idle_timeout=False)
        self._run: asyncio.Task[None] | None = None

    async def send(self, frame: Frame) -> None:
        await self.worker.queue_frame(frame)

    async def greet(self) -> None:
        """What an LLMContextAggregatorPair does at call start: hand the service the context."""
        await self.send(LLMContextFrame(LLMContext(messages=[{"role": "user", "content": "Greet the caller."}])))

    async def speak(self, pcm: bytes) -> None:
        """Caller audio as the transport delivers it: 20 ms InputAudioRawFrames in real time."""
        start = time.monotonic()
        for n, offset in enumerate(range(0, len(pcm), CHUNK_BYTES), start=1):
            await self.send(InputAudioRawFrame(audio=pcm[offset:offset + CHUNK_BYTES], sample_rate=RATE, num_channels=1))
            await asyncio.sleep(max(0.0, start + n * CHUNK_MS / 1000 - time.monotonic()))

    async def __aenter__(self) -> Running:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self._run = asyncio.create_task(runner.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._run is not None
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self._run, 10)


@pytest.mark.parametrize("server_vad", [True, False], ids=["server-vad", "client-activity"])
async def test_pipecat_gemini_live_service_talks_to_the_fake(server_vad: bool) -> None:
    """pipecat's own service: setup, greeting, 16 kHz speech in, 24 kHz TTSAudioRawFrame out."""
    async with FakeGeminiLive() as fake:
        vad = {} if server_vad else {"vad": GeminiVADParams(disabled=True)}
        async with Running(gemini_service(fake, **vad)) as pipe:
            s = await fake.session(0)
            # The context seeds the conversation and asks for the greeting (clientContent turnComplete).
            await pipe.greet()
            await fake.wait_for(lambda: len(s.completed_replies) >= 1, what="greeting")

            pcm = speech_16k("hello-world") + bytes(RATE * 2 * 7 // 10)
            if not server_vad:
                await pipe.send(UserStartedSpeakingFrame())
            await pipe.speak(pcm)
            if not server_vad:
                await pipe.send(UserStoppedSpeakingFrame())
            await fake.wait_for(lambda: len(s.completed_replies) >= 2, what="answer to speech")
            await pipe.sink.wait_for(lambda: pipe.sink.audio_bytes() >= 2 * len(fake.reply_pcm))

        assert s.model.startswith("models/") and s.voice == VOICE
        assert s.setup["systemInstruction"]["parts"][0]["text"] == "You answer the phone."
        assert "sessionResumption" in s.setup and s.setup["inputAudioTranscription"] == {}
        assert s.client_contents[0]["turnComplete"] is True
        # Every 20 ms frame went out once, in order, as audio/pcm;rate=16000.
        assert s.audio_rates == {RATE} and s.audio_in == pcm[: len(s.audio_in)]
        assert len(s.audio_in) >= len(speech_16k("hello-world"))
        if server_vad:
            assert s.automatic_activity_detection and s.activity == []
            assert s.replies[1].trigger == "speech"
        else:
            assert not s.automatic_activity_detection
            assert s.activity == ["activityStart", "activityEnd"] and s.replies[1].trigger == "activityEnd"
        assert s.protocol_errors == []
        sink = pipe.sink
        assert all(isinstance(f, TTSAudioRawFrame) and f.sample_rate == OUTPUT_RATE for f in sink.audio)
        # pipecat ends a session by cancelling its receive task inside the SDK's
        # ``async with ws_connect(...)``, so websockets closes with 1011, not 1000.
        await fake.wait_for(lambda: s.closed)
        assert s.closed_code in (1000, 1011)


async def test_pipecat_resumes_with_the_handle_after_go_away() -> None:
    """pipecat ignores goAway itself; the close that follows makes it reconnect with the last handle."""
    async with FakeGeminiLive(go_away_after_turns=1) as fake:
        async with Running(gemini_service(fake)) as pipe:
            first = await fake.session(0)
            await pipe.greet()
            second = await fake.session(1, timeout=10)
            await pipe.speak(speech_16k("vm-goodbye") + bytes(RATE * 2 * 7 // 10))
            await fake.wait_for(lambda: second.completed_replies, what="reply on the resumed session")

        assert first.go_away_sent and first.closed_code == 1011
        assert second.resumed and second.resumption_handle == first.issued_handles[-1]
        assert second.conversation_id == first.conversation_id and second.replies[0].turn == 2
        # A resumed session takes audio at once (no re-seeded history, no second greeting).
        assert second.client_contents == [] and second.audio_rates == {RATE}


# --------------------------------------------------------------------------- goAway mid-reply, withdrawn calls, many parts


def assert_valid_server_messages(sent: list[dict[str, Any]]) -> None:
    """Every message the fake sent parses as google-genai's own ``LiveServerMessage`` (unknown fields fail)."""
    for message in sent:
        types.LiveServerMessage.model_validate(message)


async def test_go_away_mid_reply_keeps_streaming_until_the_cut() -> None:
    async with FakeGeminiLive(go_away_at_reply_ms=400, go_away_time_left=2.0) as fake:
        async with sdk_client(fake).aio.live.connect(model=MODEL, config=live_config()) as session:
            async with Receiver(session) as rx:
                await session.send_client_content(turn_complete=True)
                await rx.wait_for(lambda: rx.error is not None)
        s = fake.sessions[0]
        go_away = next(i for i, m in enumerate(rx.messages) if m.go_away)
        assert rx.messages[go_away].go_away.time_left == "2s"
        assert 0 < len(rx.audio(0, go_away)) < len(fake.reply_pcm), "announced in the middle of the reply"
        assert len(rx.audio()) == len(fake.reply_pcm) and rx.turns_complete() == 1, "which still played out"
        await fake.wait_for(lambda: s.closed)
        assert rx.error.code == 1011 and s.closed_code == 1011
        assert s.go_away_at is not None
        assert_valid_server_messages(s.sent)


async def test_the_model_withdraws_its_tool_call() -> None:
    lookup = types.FunctionDeclaration(name="lookup", description="Look something up.")
    async with FakeGeminiLive(tool_call={"name": "lookup"}, tool_cancel_after_ms=200) as fake:
        config = live_config(tools=[types.Tool(function_declarations=[lookup])])
        async with sdk_client(fake).aio.live.connect(model=MODEL, config=config) as session:
            async with Receiver(session) as rx:
                await session.send_client_content(turn_complete=True)
                await rx.wait_for(lambda: rx.turns_complete() >= 1)
        s = fake.sessions[0]
        cancelled = next(m.tool_call_cancellation for m in rx.messages if m.tool_call_cancellation)
        assert cancelled.ids == ["fc1"] and s.cancelled_call_ids == ["fc1"]
        assert rx.audio() == b"" and s.replies[0].tool_cancelled
        assert_valid_server_messages(s.sent)


async def test_a_model_turn_can_carry_several_parts() -> None:
    async with FakeGeminiLive(parts_per_message=3, text_parts=("Hello", " there")) as fake:
        async with sdk_client(fake).aio.live.connect(model=MODEL, config=live_config()) as session:
            async with Receiver(session) as rx:
                await session.send_client_content(turn_complete=True)
                await rx.wait_for(lambda: rx.turns_complete() >= 1)
        turns = [m.server_content.model_turn for m in rx.messages if m.server_content and m.server_content.model_turn]
        assert [p.text for p in turns[0].parts[:2]] == ["Hello", " there"]
        assert all(len([p for p in t.parts if p.inline_data]) == 3 for t in turns)
        audio = b"".join(p.inline_data.data for t in turns for p in t.parts if p.inline_data)
        assert audio == fake.reply_pcm
        assert_valid_server_messages(fake.sessions[0].sent)
