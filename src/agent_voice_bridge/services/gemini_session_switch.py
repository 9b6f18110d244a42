"""Gemini ``goAway``: move the call to a fresh Live session before the server cuts the old one.

A Live connection lasts about ten minutes; the server announces the end with
``goAway {timeLeft}`` and then aborts the socket (protocols.md C3). pipecat ignores the
announcement and resumes only after the cut, so the reply in flight and the caller's
audio during the reconnect were lost: a gap every ten minutes. Instead this mixin:

* waits for a turn boundary (the model's turn complete, no tool call running), so the
  reply the caller is hearing finishes on the old session, unless fewer than
  :data:`SWITCH_MARGIN_SECS` of ``timeLeft`` remain, then it switches at once;
* holds the caller's audio (and, with local turn detection, the caller's start/stop of
  speech) from that moment, so nothing reaches a session that is going away;
* opens the next session with the newest resumption handle (taken at the boundary, so
  the new session remembers the reply just finished) while the old one is still up,
  hands it to pipecat's own reconnect (``_reconnect`` claims it instead of dialling),
  then sends the held audio to it in order, and counts the switch in the call's stats.

If the next session cannot be opened the held audio goes to the old session and
pipecat's resume-after-the-cut stays the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from google.genai.types import LiveConnectConfig, LiveServerMessage, SessionResumptionConfig
from loguru import logger

from agent_voice_bridge.transports.call_info import CallInfo

SWITCH_MARGIN_SECS = 2.0
"""With less than this left before the announced cut, switch at once instead of waiting for the turn to end."""
HANDLE_WAIT_SECS = 1.0
"""How long a switch waits, at the turn's end, for the handle that covers the turn (it follows turnComplete)."""


def seconds_of(duration: str | None) -> float:
    """``google.protobuf.Duration`` JSON (``"10s"``, ``"0.5s"``) in seconds; 0 when absent or unreadable."""
    try:
        return max(0.0, float((duration or "0s").rstrip("s")))
    except ValueError:
        return 0.0


class SessionSwitch:
    """Mixin for a ``GeminiLiveLLMService`` subclass; the subclass sets ``_call`` (may be None)."""

    _call: CallInfo | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._live_config: LiveConnectConfig | None = None
        self._next_session: tuple[Any, Any] | None = None
        self._switch_task: asyncio.Task | None = None
        self._turn_ended = asyncio.Event()
        self._handle_fresh = asyncio.Event()
        """Set when a resumption handle arrives, cleared at each turn's end: the handle then lags the turn."""
        self._held: list[Callable[[], Awaitable[None]]] | None = None
        self._new_session_ready: asyncio.Future | None = None

    # ------------------------------------------------------------------ hooks into pipecat

    async def _handle_server_message(self, message: LiveServerMessage) -> None:
        await super()._handle_server_message(message)  # type: ignore[misc]
        if message.server_content is not None and message.server_content.turn_complete:
            self._turn_ended.set()
            self._handle_fresh.clear()
        update = message.session_resumption_update
        if update is not None and update.resumable and update.new_handle:
            self._handle_fresh.set()
        if message.go_away is not None and self._switch_task is None:
            time_left = seconds_of(message.go_away.time_left)
            logger.info(f"{self}: goAway, {time_left:g} s left on this session; switching to a new one")
            self._switch_task = self.create_task(self._switch(time_left), name="gemini-session-switch")  # type: ignore[attr-defined]

    async def _handle_session_ready(self, session: Any) -> None:
        await super()._handle_session_ready(session)  # type: ignore[misc]
        if self._new_session_ready is not None and not self._new_session_ready.done():
            self._new_session_ready.set_result(session)

    def claim_next_session(self) -> tuple[Any, Any] | None:
        """The session opened for a switch, once: ``connect`` yields it instead of dialling."""
        parked, self._next_session = self._next_session, None
        return parked

    def remember_config(self, config: LiveConnectConfig) -> None:
        """The setup of the session being opened: the next session repeats it with a newer handle."""
        self._live_config = config

    async def _send_user_audio(self, frame: Any) -> None:
        if self._held is not None:
            self._held.append(lambda: super(SessionSwitch, self)._send_user_audio(frame))  # type: ignore[misc]
            return
        await super()._send_user_audio(frame)  # type: ignore[misc]

    async def _handle_user_started_speaking(self, frame: Any) -> None:
        if self._held is not None:
            self._held.append(lambda: super(SessionSwitch, self)._handle_user_started_speaking(frame))  # type: ignore[misc]
            return
        await super()._handle_user_started_speaking(frame)  # type: ignore[misc]

    async def _handle_user_stopped_speaking(self, frame: Any) -> None:
        if self._held is not None:
            self._held.append(lambda: super(SessionSwitch, self)._handle_user_stopped_speaking(frame))  # type: ignore[misc]
            return
        await super()._handle_user_stopped_speaking(frame)  # type: ignore[misc]

    async def cleanup(self) -> None:
        task = self._switch_task
        if task is not None and task is not asyncio.current_task():
            await self.cancel_task(task)  # type: ignore[attr-defined]
        await super().cleanup()  # type: ignore[misc]

    # ------------------------------------------------------------------ the switch

    def _at_turn_boundary(self) -> bool:
        return not self._bot_is_responding and not self._function_call_tasks  # type: ignore[attr-defined]

    async def _wait_for_turn_boundary(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._at_turn_boundary():
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.info(f"{self}: session ends before the turn does; switching mid-turn")
                return
            self._turn_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._turn_ended.wait(), min(remaining, 0.5))

    async def _open_next_session(self, timeout: float) -> tuple[Any, Any]:
        assert self._live_config is not None
        handle = self._session_resumption_handle  # type: ignore[attr-defined]
        config = self._live_config.model_copy(update={"session_resumption": SessionResumptionConfig(handle=handle)})
        live = self._client.aio.live  # type: ignore[attr-defined]
        manager = live.__class__.connect(live, model=self._settings.model, config=config)  # type: ignore[attr-defined]
        session = await asyncio.wait_for(manager.__aenter__(), timeout)
        return manager, session

    async def _switch(self, time_left: float) -> None:
        loop = asyncio.get_running_loop()
        cut_at = loop.time() + time_left
        try:
            await self._wait_for_turn_boundary(time_left - SWITCH_MARGIN_SECS)
            # The server issues the handle that covers a finished turn in a message after its turnComplete:
            # without it the new session would not remember the reply the caller just heard.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._handle_fresh.wait(),
                                       max(0.0, min(HANDLE_WAIT_SECS, cut_at - loop.time() - SWITCH_MARGIN_SECS)))
            self._held = []
            try:
                self._next_session = await self._open_next_session(max(0.5, cut_at - loop.time()))
            except Exception as exc:
                logger.warning(f"{self}: could not open the next session ({exc.__class__.__name__}: {exc}); "
                               "resuming after the cut instead")
                return
            self._new_session_ready = loop.create_future()
            await self._reconnect()  # type: ignore[attr-defined]  # pipecat's: claims the session just opened
            await asyncio.wait_for(self._new_session_ready, 5.0)
            if self._call is not None:
                self._call.stats.session_switches += 1
                if self._call.journal is not None:
                    self._call.journal.update(session_switches=self._call.stats.session_switches)
            logger.info(f"{self}: now on the new session")
        finally:
            await self._release_held()
            self._new_session_ready = None
            if self._next_session is not None:  # opened but never claimed
                manager, self._next_session = self._next_session[0], None
                with contextlib.suppress(Exception):
                    await manager.__aexit__(None, None, None)
            self._switch_task = None

    async def _release_held(self) -> None:
        """What the caller did during the switch, in order, to whatever session is current now."""
        while self._held:
            action = self._held.pop(0)
            await action()
        self._held = None
