"""What the caller has actually heard, from Twilio's mark echoes.

Twilio buffers the audio we send and plays it on its own clock. The output sends a
``mark`` every so often and at the end of each AI audio segment; Twilio echoes each
mark once the audio before it has played, or at once after a ``clear``. So the
bridge knows, without pacing timers of its own, whether the agent is still audible
and how many milliseconds of a segment reached the caller's ear before a barge-in
(which the backends use to truncate the model's memory to what was heard).

Filler audio (``thinking.filler``) is heard but is not the agent's words: it is in no
segment; its own mark only tells whether some of it may still be queued at Twilio.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent_voice_bridge.audio.echo_gate import PlayedAudio


@dataclass
class _PendingMark:
    name: str
    segment: int
    end_ms: float
    block: int  # PlayedAudio's block index at the mark


class PlaybackTracker:
    """Per-call ledger of sent audio and echoed marks, segment by segment."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.segment = 0
        self._sent_ms: dict[int, float] = {}
        self._heard_ms: dict[int, float] = {}
        self._pending: deque[_PendingMark] = deque()
        self._flushed: set[str] = set()
        self._anchor: tuple[int, float, float] | None = None  # (segment, ms heard, when)
        self._idle = True  # nothing sent is waiting to be played
        self._unmarked_ms = 0.0
        self.on_idle: Callable[[], Awaitable[None]] | None = None
        self.on_played: Callable[[int, float], None] | None = None
        """``(segment, when)``: a segment's audio began playing (its first mark's echo, less the audio before it)."""
        self.on_clear_confirmed: Callable[[], None] | None = None
        """Twilio echoed a mark a ``clear`` flushed: it has dropped what it held."""
        self._started: set[int] = set()  # segments whose first echo has come back
        self._confirming = False  # a clear was sent; its first flushed echo confirms it
        self.marks_sent = 0
        self.marks_echoed = 0
        self._filler_mark: str | None = None  # follows the filler sent last, until echoed or cleared
        self.played = PlayedAudio(clock)
        """The level of what the phone plays, by time: the echo reference (``vad.interrupter``'s echo gate)."""

    @property
    def filler_queued(self) -> bool:
        """Whether filler audio marked with :meth:`next_filler_mark` may still be waiting at Twilio."""
        return self._filler_mark is not None

    def next_filler_mark(self) -> str:
        """Name the mark sent after filler audio: its echo says the filler has played out."""
        self._filler_mark = f"filler:{self.marks_sent}"
        self.marks_sent += 1
        return self._filler_mark

    @property
    def playing(self) -> bool:
        """True while audio we sent may still be playing to the caller."""
        return not self._idle

    def new_segment(self) -> int:
        self.segment += 1
        self._sent_ms[self.segment] = 0.0
        self._heard_ms[self.segment] = 0.0
        return self.segment

    def audio_sent(self, ms: float, ulaw: bytes | None = None) -> None:
        """``ms`` of agent audio went to Twilio (``ulaw``: the audio itself, for the echo reference)."""
        if self._idle:
            # Twilio's buffer was empty, so this audio starts playing about now.
            self._anchor = (self.segment, self._sent_ms.get(self.segment, 0.0), self._clock())
            self._idle = False
        self._sent_ms[self.segment] = self._sent_ms.get(self.segment, 0.0) + ms
        self._unmarked_ms += ms
        if ulaw is not None:
            self.played.sent(ulaw)

    def sent_ms(self, segment: int | None = None) -> float:
        return self._sent_ms.get(self.segment if segment is None else segment, 0.0)

    def next_mark(self) -> str:
        """Register a mark covering everything sent so far and return its name."""
        end_ms = self.sent_ms()
        name = f"{self.segment}:{int(end_ms)}:{self.marks_sent}"
        self._pending.append(_PendingMark(name, self.segment, end_ms, self.played.blocks_sent))
        self.marks_sent += 1
        self._unmarked_ms = 0.0
        return name

    async def on_mark(self, name: str) -> None:
        """Twilio echoed ``name``: the audio before it has played (unless it was cleared)."""
        self.marks_echoed += 1
        if name == self._filler_mark:
            self._filler_mark = None
            return
        if name in self._flushed:
            self._flushed.discard(name)
            if self._confirming:
                self._confirming = False
                if self.on_clear_confirmed is not None:
                    self.on_clear_confirmed()
            return
        if not any(m.name == name for m in self._pending):
            return  # not ours (or a duplicate): it says nothing about our audio
        now = self._clock()
        while self._pending:
            mark = self._pending.popleft()
            if mark.name == name:
                if mark.segment not in self._started:
                    self._started.add(mark.segment)
                    if self.on_played is not None:
                        self.on_played(mark.segment, now - mark.end_ms / 1000.0)
                self._heard_ms[mark.segment] = mark.end_ms
                self.played.played_through(mark.block)
                self._anchor = (mark.segment, mark.end_ms, now)
                if self._pending and self._pending[0].segment != mark.segment:
                    # That segment has fully played: the one queued behind it starts now.
                    self._anchor = (self._pending[0].segment, 0.0, now)
                break
        if not self._pending and not self._unmarked_ms:
            self._idle = True
            if self.on_idle is not None:
                await self.on_idle()

    def heard_ms(self, segment: int | None = None) -> float:
        """Milliseconds of ``segment`` (default: the current one) the caller has heard by now."""
        seg = self.segment if segment is None else segment
        heard = self._heard_ms.get(seg, 0.0)
        if self._anchor and self._anchor[0] == seg and any(m.segment == seg for m in self._pending):
            _, ms, when = self._anchor
            ceiling = next(m.end_ms for m in self._pending if m.segment == seg)
            heard = max(heard, min(ms + (self._clock() - when) * 1000.0, ceiling))
        return heard

    def on_clear(self) -> float:
        """A ``clear`` was sent: freeze what was heard; echoes of pending marks no longer mean played."""
        for segment in {m.segment for m in self._pending} | {self.segment}:
            self._heard_ms[segment] = self.heard_ms(segment)
        heard = self._heard_ms.get(self.segment, 0.0)
        self._flushed.update(m.name for m in self._pending)
        self._confirming = bool(self._pending)
        self._pending.clear()
        self._filler_mark = None
        self.played.cleared()
        self._anchor = None
        self._idle = True
        self._unmarked_ms = 0.0
        return heard
