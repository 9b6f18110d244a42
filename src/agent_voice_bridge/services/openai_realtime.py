"""``openai.realtime``: OpenAI's Realtime speech-to-speech model, through pipecat's service.

Two audio modes. ``pcm``: 24 kHz PCM in and out, with the chain's resamplers
around it. ``pcmu``: Twilio's μ-law passes straight through (``twilio.input →
openai.realtime → twilio.output``): no decoding, resampling or encoding at all.
pipecat's service always speaks 24 kHz PCM to its callers, so this stage carries
μ-law in and out itself.

On a barge-in the model's reply is truncated to what the caller actually heard
according to Twilio's mark echoes (the call's playback tracker), not to the wall
clock since the first audio arrived, so the model's memory matches the caller's.
With ``turn_detection: model`` the server's VAD decides, and its
``speech_started`` interrupts the line the same way a local VAD would.

The session is the provider's to configure: caller audio waits (a second at most)
until ``session.updated`` confirms the format, an error answering the bridge's own
``session.update`` ends the AI leg like a lost backend (the server would otherwise
go on with its defaults: wrong audio format, no instructions, no tools), and the
call says goodbye ahead of the ``expires_at`` the server announces.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Literal

from loguru import logger
from pipecat.frames.frames import Frame, InputAudioRawFrame, StartFrame, TTSAudioRawFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pydantic import Field
from websockets.asyncio.client import connect as websocket_connect
from websockets.protocol import State

from agent_voice_bridge.pipelines.formats import MULAW_8K, AudioFormat, Side, pcm16, require
from agent_voice_bridge.pipelines.stage import Stage, StageContext
from agent_voice_bridge.processors.frames import InputMulawAudioFrame, KeypadEntryFrame, OutputMulawAudioFrame
from agent_voice_bridge.services import early, model_deprecations
from agent_voice_bridge.services.backend import (
    CLOSE_TIMEOUT_SECS,
    BackendWatch,
    RealtimeParams,
    greeting_prompt,
    instructions_for,
    opening_line,
    register_tools,
)
from agent_voice_bridge.services.held_audio import HeldAudio
from agent_voice_bridge.services.opening import DeferredGreeting, opening
from agent_voice_bridge.transports.call_info import CallInfo

PCM_RATE = 24000
DEFAULT_MODEL = "gpt-realtime-2.1"
DEFAULT_TRANSCRIBE = "gpt-live-transcribe"
UNANNOUNCED_SESSION_SECS = 3600.0
"""A session's length when ``session.created`` carries no ``expires_at`` (GA sessions: 60 minutes today)."""
HELD_AUDIO_SECS = 1.0
RECOVERABLE_ERRORS = {
    "response_cancel_not_active", "conversation_already_has_active_response", "input_audio_buffer_commit_empty",
    "item_truncate_invalid_item_id", "invalid_value",
}
"""Error codes that concern one request, not the session: logged, and the call goes on."""
DEFAULT_URL = "wss://api.openai.com/v1/realtime"


class OpenAIRealtimeParams(RealtimeParams):
    model: str | None = Field(default=DEFAULT_MODEL, description="Realtime model.")
    voice: str | None = Field(default="marin", description="Voice (marin, cedar, alloy, …); fixed once it spoke.")
    audio_format: Literal["pcm", "pcmu"] = Field(
        default="pcm", description="'pcmu' takes and gives Twilio's 8 kHz μ-law directly.")
    transcribe: str | None = Field(
        default=DEFAULT_TRANSCRIBE, description="Model that transcribes the caller for the call's "
        "transcript (billed separately by OpenAI); empty: no caller transcript.")
    silence_ms: int = Field(default=500, ge=100, le=5000, description="Server VAD: silence that ends a turn.")
    session_end_margin_secs: float = Field(
        default=15.0, ge=0, description="OpenAI closes a session at the expires_at its session.created "
        "announces: the call is ended politely (a spoken goodbye) this long before, instead of cut off.")
    session_limit_secs: float | None = Field(
        default=None, gt=0, description="End the call politely after this long even if the session allows more "
        "(the margin still applies). Unset: the session's own expires_at.")


class OpenAIRealtime(Stage, BackendWatch, OpenAIRealtimeLLMService):
    """pipecat's ``OpenAIRealtimeLLMService`` configured from YAML for one call."""

    Params = OpenAIRealtimeParams
    role = "responder"

    def __init__(self, *, call: CallInfo | None = None, audio_format: str = "pcm", greeting: str | None = None,
                 deferred: DeferredGreeting | None = None,
                 model_turns: bool = True, session_limit_secs: float | None = None,
                 session_end_margin_secs: float = 15.0, **kwargs: Any):
        super().__init__(**kwargs)
        self._call = call
        self._mulaw = audio_format == "pcmu"
        self._greeting = greeting
        self._deferred = deferred
        self._model_turns = model_turns
        self._item_base_ms = 0.0
        self._interrupted_items: set[str] = set()
        self._recoverable_error = False
        self._session_limit_secs = session_limit_secs
        self._session_end_margin_secs = session_end_margin_secs
        self._session_timer: asyncio.TimerHandle | None = None
        self._session_update_ids: set[str] = set()
        self._held: HeldAudio[bytes | InputAudioRawFrame] = HeldAudio(HELD_AUDIO_SECS)

    @classmethod
    def audio_out(cls, params: OpenAIRealtimeParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        if params.audio_format == "pcmu":
            require(audio_in, encoding="mulaw", rates=(8000,))
            return MULAW_8K
        require(audio_in, encoding="pcm16", rates=(PCM_RATE,))
        return pcm16(PCM_RATE)

    @classmethod
    def create(cls, params: OpenAIRealtimeParams, ctx: StageContext) -> OpenAIRealtime:
        fmt = events.PCMUAudioFormat() if params.audio_format == "pcmu" else events.PCMAudioFormat()
        turns = (events.TurnDetection(silence_duration_ms=params.silence_ms)
                 if params.turn_detection == "model" else False)
        session = events.SessionProperties(audio=events.AudioConfiguration(
            input=events.AudioInput(format=fmt, turn_detection=turns, transcription=(
                events.InputAudioTranscription(model=params.transcribe, language=params.language.split("-")[0])
                if params.transcribe else None)),
            output=events.AudioOutput(format=fmt, voice=params.voice)), tools=params.tools_schema(ctx.call))
        settings = cls.Settings(model=params.model, system_instruction=instructions_for(params, ctx),
                                session_properties=session)
        greeting, deferred = opening(opening_line(params, ctx), ctx.call)
        service = cls(api_key=params.api_key, base_url=params.base_url or DEFAULT_URL, settings=settings,
                      call=ctx.call, audio_format=params.audio_format, greeting=greeting, deferred=deferred,
                      model_turns=params.turn_detection == "model", session_limit_secs=params.session_limit_secs,
                      session_end_margin_secs=params.session_end_margin_secs)
        register_tools(service, params, ctx.call)
        return service

    @classmethod
    def warnings(cls, params: OpenAIRealtimeParams) -> list[str]:
        found = []
        for key, model, deprecated in (("model", params.model, model_deprecations.realtime_models()),
                                       ("transcribe", params.transcribe, model_deprecations.transcription_models())):
            if model in deprecated:
                found.append(f"{key}: {model!r} is deprecated by OpenAI and shuts down on {deprecated[model]} "
                             f"(the installed openai SDK says so); a current one: {cls.Params.model_fields[key].default!r}")
        return found

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if self._mulaw and isinstance(frame, InputMulawAudioFrame):
            await self._send_mulaw(frame.audio)
            return
        if isinstance(frame, KeypadEntryFrame):
            await self._answer_keypad(frame)
            await self.push_frame(frame, direction)
            return
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            if self._session_limit_secs is not None:
                self._schedule_polite_end(time.time() + self._session_limit_secs)
            if self._deferred is not None:
                self._deferred.start(self)  # the conversation opens when the callee speaks or the wait ends
            elif self._greeting:
                await self.open_with_greeting(greeting_prompt(self._greeting))
            else:
                await self.open_without_greeting()

    async def open_with_greeting(self, prompt: str) -> None:
        await self._handle_context(LLMContext(messages=[{"role": "user", "content": prompt}]),
                                   FrameDirection.DOWNSTREAM)

    async def open_without_greeting(self) -> None:
        # No context aggregator in the chain: an empty context lets tool results ask for the
        # next response without making the model speak first.
        if not self._context:
            self._context = LLMContext()

    async def _answer_keypad(self, entry: KeypadEntryFrame) -> None:
        """The caller's keys as a user message item, then a response (held by pipecat while one runs).

        pipecat's own append sends user messages as ``system`` items and leaves the response to an
        aggregator this chain does not have. The message also goes into the context, so a session
        set up later (or again, after a reconnect) gets it with the rest.
        """
        if self._context is None:
            self._context = LLMContext()
        self._context.add_messages(entry.messages)
        if self._api_session_ready and not self._llm_needs_conversation_setup:
            for message in entry.messages:
                await self._send_message_item(str(message["content"]), role="user")
        self._results_awaiting_response = True
        await self._create_response()

    def _schedule_polite_end(self, ends_at: float) -> None:
        """Say goodbye the margin before ``ends_at`` (epoch seconds), or before an earlier end already planned."""
        control = self._call.control if self._call is not None else None
        if control is None:
            return
        delay = max(ends_at - time.time() - self._session_end_margin_secs, 0.0)
        loop = asyncio.get_running_loop()
        if self._session_timer is not None:
            if self._session_timer.when() <= loop.time() + delay:
                return
            self._session_timer.cancel()
        self._session_timer = loop.call_later(
            delay, lambda: asyncio.ensure_future(control.end("goodbye_time_limit", "OpenAI session limit")))

    async def _handle_evt_session_created(self, evt):
        expires_at = evt.session.expires_at
        if expires_at is None:
            logger.warning(f"{self}: session.created announced no expires_at; assuming "
                           f"{UNANNOUNCED_SESSION_SECS:.0f} s")
            expires_at = time.time() + UNANNOUNCED_SESSION_SECS
        self._schedule_polite_end(float(expires_at))
        await super()._handle_evt_session_created(evt)

    async def _handle_evt_session_updated(self, evt):
        # Audio held while the session still had its default format goes first, in order; pipecat's
        # handler then marks the session ready (no await before it), so nothing overtakes the held audio.
        while self._held:
            for item in self._held.take():
                await self._append(item)
        await super()._handle_evt_session_updated(evt)

    async def send_client_event(self, event: events.ClientEvent):
        if isinstance(event, events.SessionUpdateEvent):
            self._session_update_ids.add(event.event_id)  # its error, if any, names this id
        await super().send_client_event(event)

    async def cleanup(self):
        if self._session_timer is not None:
            self._session_timer.cancel()
        await super().cleanup()

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if self._mulaw and isinstance(frame, TTSAudioRawFrame):
            frame = OutputMulawAudioFrame(audio=frame.audio)  # the session speaks μ-law; pipecat labels it PCM
        await super().push_frame(frame, direction)

    async def _send_mulaw(self, audio: bytes) -> None:
        if self._audio_input_paused:
            return
        if not self._api_session_ready:
            self._held.hold(audio, len(audio) / 8000)
            return
        await self.send_client_event(events.InputAudioBufferAppendEvent(audio=base64.b64encode(audio).decode()))

    async def _send_user_audio(self, frame: InputAudioRawFrame):
        if not self._api_session_ready:
            self._held.hold(frame, len(frame.audio) / 2 / frame.sample_rate / frame.num_channels)
            return
        await super()._send_user_audio(frame)

    async def _append(self, item: bytes | InputAudioRawFrame) -> None:
        if isinstance(item, bytes):
            await self.send_client_event(events.InputAudioBufferAppendEvent(audio=base64.b64encode(item).decode()))
        else:
            await super()._send_user_audio(item)

    def _calculate_audio_duration_ms(self, total_bytes: int, sample_rate: int = PCM_RATE,
                                     bytes_per_sample: int = 2) -> int:
        if self._mulaw:
            return int(total_bytes / 8)
        return super()._calculate_audio_duration_ms(total_bytes, sample_rate, bytes_per_sample)

    async def _handle_evt_audio_delta(self, evt):
        if evt.item_id in self._interrupted_items:
            return  # streamed before the server saw the barge-in: the caller must never hear it
        current = self._current_audio_response
        if current is None:
            self._item_base_ms = 0.0
        elif current.item_id != evt.item_id:
            # A second output item in the same reply plays after the first one.
            self._item_base_ms += self._calculate_audio_duration_ms(current.total_size)
        await super()._handle_evt_audio_delta(evt)

    async def _handle_evt_speech_started(self, evt):
        await super()._handle_evt_speech_started(evt)
        if self._model_turns:
            # No turn aggregator in the chain to act on the proposal: the server's VAD is the barge-in.
            await self.broadcast_interruption()

    async def _truncate_current_audio_response(self):
        """Truncate the interrupted item to the milliseconds the caller heard (mark echoes)."""
        current = self._current_audio_response
        if current is None:
            return
        self._current_audio_response = None
        self._interrupted_items.add(current.item_id)
        duration = self._calculate_audio_duration_ms(current.total_size)
        if self._call is not None:
            heard = self._call.playback.heard_ms() - self._item_base_ms
        else:
            heard = duration
        audio_end_ms = int(max(0.0, min(heard, duration)))
        logger.debug(f"{self}: truncating {current.item_id} at {audio_end_ms} ms heard of {duration} ms")
        try:
            await self.send_client_event(events.ConversationItemTruncateEvent(
                item_id=current.item_id, content_index=current.content_index, audio_end_ms=audio_end_ms))
        except Exception as exc:  # a refused truncate must not end the call
            logger.warning(f"{self}: truncation failed: {exc}")

    async def _handle_function_call_result(self, frame):
        await super()._handle_function_call_result(frame)
        # pipecat leaves asking for the next response to a context aggregator, which this chain
        # does not have. An intermediate result ("still running") gets a response too: the model
        # tells the caller it is working on it instead of leaving dead air.
        await self._create_response()

    async def _receive_task_handler(self):
        # pipecat stops reading at any server error; keep reading after one that concerned a single request.
        while True:
            self._recoverable_error = False
            try:
                await super()._receive_task_handler()
            except Exception as exc:
                reason = f"connection lost: {exc}"
                break
            if not self._recoverable_error:
                reason = "connection closed"
                break
        if not self._disconnecting and not self._backend_lost:
            await self.backend_lost(reason)

    async def _handle_evt_error(self, evt):
        if evt.error.event_id in self._session_update_ids:
            # A rejected update changes nothing: the session would go on in its defaults (24 kHz PCM, no
            # instructions, no tools) while the caller hears noise or nothing.
            await self.backend_lost(f"session configuration rejected: {evt.error.type} {evt.error.code}: "
                                    f"{evt.error.message}")
            return
        if evt.error.code in RECOVERABLE_ERRORS:
            logger.warning(f"{self}: {evt.error.code}: {evt.error.message}")
            self._recoverable_error = True
            return
        await self.backend_lost(f"{evt.error.type} {evt.error.code}: {evt.error.message}")

    async def _ws_send(self, realtime_message):
        if self._backend_lost:
            return  # one line in the log for a lost session, not one per audio frame
        await super()._ws_send(realtime_message)

    @classmethod
    def connect_early(cls, params: OpenAIRealtimeParams, call: CallInfo) -> None:
        url = f"{params.base_url or DEFAULT_URL}?model={params.model}"
        headers = {"Authorization": f"Bearer {params.api_key}"}
        def connect():
            return websocket_connect(uri=url, additional_headers=headers, close_timeout=CLOSE_TIMEOUT_SECS)

        early.open_early(call.call_sid, "openai.realtime", connect, lambda ws: ws.close())

    async def _connect(self):
        if self._websocket is None and self._call is not None:
            websocket = await early.claim(self._call.call_sid, "openai.realtime")
            if websocket is not None and websocket.state is State.OPEN:
                self._websocket = websocket
                self._receive_task = self.create_task(self._receive_task_handler())
                return
        await super()._connect()
        if self._websocket is not None:
            self._websocket.close_timeout = CLOSE_TIMEOUT_SECS  # pipecat's own connect keeps websockets' 10 s
        if self._websocket is None and not self._backend_lost:
            await self.backend_lost("could not connect")
