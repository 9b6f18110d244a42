"""Gemini's ``toolCallCancellation``: the model takes back a tool call it made.

The server names call ids the client must not answer (typically the caller talked
over the model while a call was pending; protocols.md C3). pipecat ignores the
message, so a cancelled tool still ran to the end and its result went out, and a
cancelled ``end_call`` still hung up. This mixin cancels the running handler (its
runner item is settled first, so nothing it reports later is sent), refuses any
result for those ids at the one place results leave, and takes back a hang-up that
a cancelled ``end_call`` asked for, as long as it has not happened yet.
"""

from __future__ import annotations

from typing import Any

from google.genai.types import LiveServerMessage
from loguru import logger

from agent_voice_bridge.services.tools import END_CALL
from agent_voice_bridge.transports.call_info import CallInfo


class ToolCallCancellation:
    """Mixin for a ``GeminiLiveLLMService`` subclass; the subclass sets ``_call`` (may be None)."""

    _call: CallInfo | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cancelled_tool_calls: set[str] = set()

    async def _handle_server_message(self, message: LiveServerMessage) -> None:
        await super()._handle_server_message(message)  # type: ignore[misc]
        if message.tool_call_cancellation is not None:
            await self._cancel_tool_calls(list(message.tool_call_cancellation.ids or []))

    async def _cancel_tool_calls(self, ids: list[str]) -> None:
        if not ids:
            return
        wanted = set(ids)
        self._cancelled_tool_calls.update(wanted)
        names = {i: self._tool_call_id_to_name.get(i) for i in ids}  # type: ignore[attr-defined]
        running = [item for item in self._function_call_tasks.values()  # type: ignore[attr-defined]
                   if item.tool_call_id in wanted]
        names.update({item.tool_call_id: item.function_name for item in running})
        logger.info(f"{self}: the model cancelled tool calls {sorted(wanted)}; no results go out for them")
        await self._cancel_function_call_tasks(  # type: ignore[attr-defined]
            lambda item: item.tool_call_id in wanted, reason="toolCallCancellation")
        if END_CALL in names.values() and self._call is not None and self._call.control is not None:
            if await self._call.control.retract_hang_up():
                logger.info(f"{self}: end_call was cancelled by the model; the call goes on")

    async def _tool_result(self, tool_call_id: str, *args: Any, **kwargs: Any) -> None:
        if tool_call_id in self._cancelled_tool_calls:
            logger.debug(f"{self}: not answering cancelled tool call {tool_call_id}")
            return
        await super()._tool_result(tool_call_id, *args, **kwargs)  # type: ignore[misc]
