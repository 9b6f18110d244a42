"""The AI's opening line on a call it placed: let the callee say "Hello?" first.

On an inbound call the AI may greet at once. On an outbound call the callee
picks up and says "Hello?" — if the AI is already talking, that word barges in
and cuts its opening line off (a known problem of phone bridges). With
``outbound.first_turn: wait_for_hello`` the stage holds its greeting back: when
the callee speaks, the model simply answers them (its instructions say why we
are calling); if they stay silent for ``hello_timeout_secs``, it greets anyway.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from agent_voice_bridge.services.backend import greeting_prompt
from agent_voice_bridge.transports.call_info import CallInfo


class OpensConversation(Protocol):
    """What an AI stage does for a deferred greeting (each model's API opens a conversation its own way)."""

    def create_task(self, coroutine, name: str | None = None) -> asyncio.Task: ...

    async def open_with_greeting(self, prompt: str) -> None:
        """The callee said nothing: ask the model to speak ``prompt``'s greeting now."""

    async def open_without_greeting(self) -> None:
        """The callee spoke first: the model answers them; the greeting is dropped."""


class DeferredGreeting:
    """Speaks ``greeting`` only if the callee has said nothing ``timeout`` seconds after the call starts."""

    def __init__(self, greeting: str, call: CallInfo, timeout: float):
        self.greeting = greeting
        self._call = call
        self._timeout = timeout

    def start(self, service: OpensConversation) -> None:
        service.create_task(self._greet_unless_hello(service), name="deferred_greeting")

    async def _greet_unless_hello(self, service: OpensConversation) -> None:
        try:
            await asyncio.wait_for(self._call.caller_spoke.wait(), self._timeout)
        except asyncio.TimeoutError:
            await service.open_with_greeting(greeting_prompt(self.greeting))
        else:
            await service.open_without_greeting()


def opening(greeting: str | None, call: CallInfo | None) -> tuple[str | None, DeferredGreeting | None]:
    """The greeting to speak at once, or the one to hold back for the callee's hello."""
    if greeting and call is not None and call.hello_timeout_secs:
        return None, DeferredGreeting(greeting, call, call.hello_timeout_secs)
    return greeting, None
