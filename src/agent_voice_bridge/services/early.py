"""Connections to the model opened while Twilio is still fetching TwiML and opening the stream.

Between ``/incoming`` and the stream's ``start`` Twilio spends a few hundred
milliseconds; opening the model's WebSocket (TCP, TLS, upgrade) in that window means
the greeting does not wait for it. Connections are kept per CallSid for a short
while and closed if their call never arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

KEEP_SECONDS = 30.0

_pending: dict[tuple[str, str], tuple[asyncio.Task, asyncio.TimerHandle]] = {}


def open_early(call_sid: str, key: str, opener: Callable[[], Awaitable[Any]],
               closer: Callable[[Any], Awaitable[None]]) -> None:
    """Start opening a connection for ``call_sid`` now; :func:`claim` takes it when the call starts."""
    if not call_sid or (call_sid, key) in _pending:
        return
    task = asyncio.ensure_future(opener())

    async def expire() -> None:
        if _pending.pop((call_sid, key), (None,))[0] is task:
            connection = await _result(task)
            if connection is not None:
                logger.info(f"call {call_sid}: stream never started; closing the early {key} connection")
                await closer(connection)

    timer = asyncio.get_running_loop().call_later(KEEP_SECONDS, lambda: asyncio.ensure_future(expire()))
    _pending[(call_sid, key)] = (task, timer)


async def claim(call_sid: str, key: str) -> Any | None:
    """The early connection for this call, or None (not opened, or opening it failed)."""
    entry = _pending.pop((call_sid, key), None)
    if entry is None:
        return None
    task, timer = entry
    timer.cancel()
    return await _result(task)


async def _result(task: asyncio.Task) -> Any | None:
    try:
        return await task
    except Exception as exc:  # the stage connects the ordinary way and reports a real failure then
        logger.warning(f"early connection failed: {exc.__class__.__name__}: {exc}")
        return None
