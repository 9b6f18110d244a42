"""Caller audio held back until a model session can read it, bounded, and given back in order.

A realtime session reads appended audio in whatever format it has *at that moment*; until the bridge's
configuration is confirmed that is the provider's default (OpenAI: 24 kHz PCM), so μ-law sent early is
heard as noise and can trip the server's VAD. Holding the first frames costs nothing on a call that has
not yet been answered, and a bound keeps a session that never confirms from growing it without limit.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from loguru import logger

Held = TypeVar("Held")


class HeldAudio(Generic[Held]):
    """At most ``limit_secs`` of the newest audio; the oldest is dropped (and said once) past that."""

    def __init__(self, limit_secs: float = 1.0) -> None:
        self._limit = limit_secs
        self._items: deque[tuple[float, Held]] = deque()
        self._secs = 0.0
        self._dropped = False

    def __len__(self) -> int:
        return len(self._items)

    def hold(self, item: Held, secs: float) -> None:
        self._items.append((secs, item))
        self._secs += secs
        while self._secs > self._limit and len(self._items) > 1:
            self._secs -= self._items.popleft()[0]
            if not self._dropped:
                self._dropped = True
                logger.warning(f"caller audio held over {self._limit:.1f} s before the session was ready: "
                               "the oldest is dropped")

    def take(self) -> list[Held]:
        """Everything held, oldest first, and forget it."""
        items = [item for _, item in self._items]
        self._items.clear()
        self._secs = 0.0
        return items
