"""``gemini.live``: Google's Gemini Live speech-to-speech model, through pipecat's service.

Takes 16 kHz PCM (the chain's resampler feeds it), gives 24 kHz PCM. pipecat's
service ignores the caller's audio until it has a conversation context (normally
from a context aggregator this chain does not have), so the stage seeds one at
start: empty, or holding the greeting request when the AI should speak first.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from google.genai.types import HttpOptions
from loguru import logger
from pipecat.frames.frames import Frame, LLMMessagesAppendFrame, StartFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.google.gemini_live.llm import (
    MAX_CONSECUTIVE_FAILURES,
    GeminiLiveLLMService,
    GeminiVADParams,
)
from pydantic import Field

from agent_voice_bridge.pipelines.formats import AudioFormat, Side, pcm16, require
from agent_voice_bridge.pipelines.stage import Stage, StageContext
from agent_voice_bridge.processors.frames import KeypadEntryFrame
from agent_voice_bridge.services import early
from agent_voice_bridge.services.backend import (
    CLOSE_TIMEOUT_SECS,
    BackendWatch,
    RealtimeParams,
    greeting_prompt,
    instructions_for,
    opening_line,
    register_tools,
    ssl_context,
)
from agent_voice_bridge.services.gemini_session_switch import SessionSwitch
from agent_voice_bridge.services.gemini_tool_cancellation import ToolCallCancellation
from agent_voice_bridge.services.gemini_turns import EveryModelTurnPart
from agent_voice_bridge.services.opening import DeferredGreeting, opening
from agent_voice_bridge.transports.call_info import CallInfo

EARLY_KEY = "gemini.live"
INPUT_RATE = 16000
OUTPUT_RATE = 24000


class GeminiLiveParams(RealtimeParams):
    voice: str | None = Field(default="Puck", description="Prebuilt voice (Puck, Charon, Kore, Fenrir, Aoede…).")
    api_version: str | None = Field(default=None, description="API version in the endpoint path (v1beta, v1alpha).")


class GeminiLive(Stage, BackendWatch, SessionSwitch, ToolCallCancellation, EveryModelTurnPart, GeminiLiveLLMService):
    """pipecat's ``GeminiLiveLLMService`` configured from YAML for one call.

    The mixins add what pipecat's service lacks: a switch to a fresh session on ``goAway``
    (gemini_session_switch), the model's ``toolCallCancellation`` (gemini_tool_cancellation), and
    every part of a multi-part ``modelTurn`` (gemini_turns).
    """

    Params = GeminiLiveParams
    role = "responder"

    def __init__(self, *, greeting: str | None = None, deferred: DeferredGreeting | None = None,
                 call: CallInfo | None = None, **kwargs: Any):
        super().__init__(inference_on_context_initialization=bool(greeting), **kwargs)
        self._greeting = greeting
        self._deferred = deferred
        self._call = call
        self._call_sid = call.call_sid if call is not None else ""
        self._opening_early = False

    @classmethod
    def audio_out(cls, params: GeminiLiveParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        require(audio_in, encoding="pcm16", rates=(INPUT_RATE,))
        return pcm16(OUTPUT_RATE)

    @classmethod
    def create(cls, params: GeminiLiveParams, ctx: StageContext) -> GeminiLive:
        # Compression lifts the ~15 min audio-session limit; connection resets (goAway, ~10 min) are
        # resumed by pipecat with the session-resumption handle.
        settings = cls.Settings(language=params.language, context_window_compression={"enabled": True})
        if params.model:
            settings.model = params.model if params.model.startswith("models/") else f"models/{params.model}"
        if params.voice:
            settings.voice = params.voice
        if params.turn_detection == "local":
            settings.vad = GeminiVADParams(disabled=True)
        http: dict[str, Any] = {}
        if params.base_url:
            http["base_url"] = params.base_url.rstrip("/")
        if params.api_version:
            http["api_version"] = params.api_version
        context = ssl_context(params.ca_file)
        if context is not None:
            http["async_client_args"] = {"ssl": context}
        greeting, deferred = opening(opening_line(params, ctx), ctx.call)
        service = cls(
            call=ctx.call,
            api_key=params.api_key,
            system_instruction=instructions_for(params, ctx),
            settings=settings,
            tools=params.tools_schema(ctx.call),
            http_options=HttpOptions(**http) if http else None,
            greeting=greeting,
            deferred=deferred,
        )
        register_tools(service, params, ctx.call)
        return service

    @classmethod
    def connect_early(cls, params: GeminiLiveParams, call: CallInfo) -> None:
        """Open the Live session (TLS, upgrade, setup) from ``/incoming``, with this call's exact config.

        A throwaway instance runs pipecat's own ``_connect`` so the setup message is the one the call's
        stage would send; its connection handler only opens the session and parks it for the call.
        """
        service = cls.create(params, StageContext(audio_in=None, side="caller", call=call))
        service._opening_early = True
        service.create_task = lambda coroutine, name=None, context=None: asyncio.ensure_future(coroutine)
        early.open_early(call.call_sid, EARLY_KEY, service._open_session_early, _close_early)

    async def _open_session_early(self) -> tuple[Any, Any, Any]:
        opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self._early_result = opened
        await self._connect()
        return await opened

    def create_client(self):
        super().create_client()
        live, service = self._client.aio.live, self
        connect = live.connect

        @contextlib.asynccontextmanager
        async def connect_or_claim(*, model: str, config: Any):
            next_session = service.claim_next_session()  # opened for a goAway switch, with this very setup
            if next_session is not None:
                manager, session = next_session
                try:
                    yield _bounded_close(session)
                finally:
                    await manager.__aexit__(None, None, None)
                return
            parked = await early.claim(service._call_sid, EARLY_KEY) if service._call_sid else None
            if parked is not None and not _same_setup(parked[2], config):
                # The call's facts changed since /incoming (a <Parameter> only the stream carries):
                # the parked session has the wrong setup.
                await _close_early(parked)
                parked = None
            if parked is None:
                async with connect(model=model, config=config) as session:
                    yield _bounded_close(session)
                return
            manager, session, _ = parked
            try:
                yield session
            finally:
                await manager.__aexit__(None, None, None)

        live.connect = connect_or_claim

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, KeypadEntryFrame):
            # The caller's keys as a complete user turn (one clientContent, turnComplete): the model answers.
            if self._session is None:
                logger.warning(f"{self}: a keypad entry came before the Live session was open; it is dropped")
            await self._create_single_response(frame.messages)
            await self.push_frame(frame, direction)
            return
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            messages = [{"role": "user", "content": greeting_prompt(self._greeting)}] if self._greeting else []
            await self._handle_context(LLMContext(messages=messages))
            if self._deferred is not None:
                self._deferred.start(self)

    async def open_with_greeting(self, prompt: str) -> None:
        await self._handle_messages_append(LLMMessagesAppendFrame(messages=[{"role": "user", "content": prompt}]))
        await self._complete_turn()

    async def open_without_greeting(self) -> None:
        """The model answers the callee's hello with its own voice detection: nothing to send."""

    async def _connection_task_handler(self, config):
        if self._opening_early:
            try:
                manager = self._client.aio.live.__class__.connect(self._client.aio.live,
                                                                  model=self._settings.model, config=config)
                session = _bounded_close(await manager.__aenter__())
                self._early_result.set_result((manager, session, config))
            except Exception as exc:
                self._early_result.set_exception(exc)
            return
        self.remember_config(config)
        # pipecat retries a dropped session with its resumption handle; what reaches here is a session
        # that could not be opened at all, or one it gave up on.
        try:
            await super()._connection_task_handler(config)
        except Exception as exc:
            if not self._disconnecting:
                await self.backend_lost(f"session failed: {exc}")
            return
        if not self._disconnecting and self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            await self.backend_lost("session closed and could not be resumed")


def _bounded_close(session: Any) -> Any:
    """The session, its socket's close handshake bounded (google-genai keeps websockets' 10 s default)."""
    socket = getattr(session, "_ws", None)
    if socket is not None and hasattr(socket, "close_timeout"):
        socket.close_timeout = CLOSE_TIMEOUT_SECS
    return session


async def _close_early(parked: tuple[Any, Any, Any]) -> None:
    manager = parked[0]
    await manager.__aexit__(None, None, None)


def _instruction_text(instruction: Any) -> str:
    if instruction is None or isinstance(instruction, str):
        return instruction or ""
    return "".join(part.text or "" for part in instruction.parts or [])


def _same_setup(a: Any, b: Any) -> bool:
    """Whether two LiveConnectConfigs ask for the same session (the instruction may be str or Content)."""
    return (a.model_dump(exclude={"system_instruction"}) == b.model_dump(exclude={"system_instruction"})
            and _instruction_text(a.system_instruction) == _instruction_text(b.system_instruction))
