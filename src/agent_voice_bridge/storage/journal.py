"""A call's record and transcript, written to the store while the call goes on.

The transport stages see everything a call says without knowing which AI is in
the chain: ``twilio.input`` receives the caller's transcriptions (speech-to-speech
services push them upstream), ``twilio.output`` the agent's text and audio (they
flow down to it). They tell the journal; the journal turns that into turns.

An agent turn is only final once Twilio has played it or a barge-in has cleared
it, so it is written then, holding only the words the caller heard: the share of
the text in proportion to the share of its audio that played (transcripts carry
no word timings), marked ``truncated``. Caller turns are written as soon as their
transcription arrives. Writes go through one queue per call, in order, off the
audio path; a failing database is logged and never ends the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from loguru import logger

from agent_voice_bridge.storage.records import CallRecord, Message, Turn
from agent_voice_bridge.storage.store import CallStore

CLOSE_TIMEOUT_SECS = 5.0
HEARD_IN_FULL_MS = 40.0
"""An agent turn cut less than this short was heard in full (mark resolution and jitter)."""


@dataclass
class _AgentTurn:
    started_at: float
    parts: list[str] = field(default_factory=list)
    segment: int | None = None
    text_done: bool = False

    @property
    def text(self) -> str:
        return "".join(self.parts).strip()


def heard_text(text: str, heard_ms: float, sent_ms: float) -> tuple[str, bool]:
    """The words of ``text`` the caller heard, and whether the turn was cut short."""
    if sent_ms <= 0 or heard_ms >= sent_ms - HEARD_IN_FULL_MS:
        return text, False
    words = text.split()
    return " ".join(words[: round(len(words) * max(heard_ms, 0.0) / sent_ms)]), True


class CallJournal:
    """One call's writer: the record at start and end, and every turn in between."""

    def __init__(self, store: CallStore, record: CallRecord, clock: Callable[[], float] = time.time):
        self._store = store
        self.record = record
        self._clock = clock
        self._t0 = record.started_at.timestamp()
        self._writes: asyncio.Queue[tuple[str, tuple[Any, ...], dict[str, Any]] | None] = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        self._failed = False
        self._caller_onset: float | None = None
        self._agent: list[_AgentTurn] = []
        self.usage: dict[str, int] = {}

    def _ms(self, at: float) -> float:
        return max((at - self._t0) * 1000.0, 0.0)

    def _write(self, method: str, *args: Any, **fields: Any) -> None:
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._drain())
        self._writes.put_nowait((method, args, fields))

    async def _drain(self) -> None:
        while (job := await self._writes.get()) is not None:
            method, args, fields = job
            stored = fields.pop("_stored", None)
            try:
                result = await getattr(self._store, method)(*args, **fields)
                if stored is not None:
                    stored(result)
            except Exception as exc:  # the call goes on; the operator sees why its record is incomplete
                if not self._failed:
                    logger.error(f"call {self.record.call_sid}: storing the call failed "
                                 f"({exc.__class__.__name__}: {exc}); it goes on unrecorded")
                self._failed = True

    def open(self) -> None:
        self._write("start_call", self.record)

    # -- the caller ------------------------------------------------------------------------------------------
    def caller_speaking(self) -> None:
        if self._caller_onset is None:
            self._caller_onset = self._clock()

    def caller_said(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        started = self._caller_onset if self._caller_onset is not None else self._clock()
        self._caller_onset = None
        self._add(Turn(speaker="caller", text=text, started_ms=self._ms(started)))

    # -- the agent -------------------------------------------------------------------------------------------
    def agent_turn_started(self) -> None:
        """The AI starts a new reply (``TTSStartedFrame``): a new turn, unless its text came first."""
        if not self._agent or self._agent[-1].segment is not None or self._agent[-1].text_done:
            self._agent.append(_AgentTurn(self._clock()))

    def agent_text(self, text: str) -> None:
        if not self._agent or self._agent[-1].text_done:
            self._agent.append(_AgentTurn(self._clock()))
        self._agent[-1].parts.append(text)

    def agent_text_done(self) -> None:
        if self._agent:
            self._agent[-1].text_done = True

    def agent_audio(self, segment: int) -> None:
        """The first audio of playback segment ``segment`` went out: it voices the open turn."""
        if not self._agent or self._agent[-1].segment is not None:
            self._agent.append(_AgentTurn(self._clock()))
        turn = self._agent[-1]
        turn.segment, turn.started_at = segment, self._clock()

    def playback_settled(self, heard_ms: Callable[[int], float], sent_ms: Callable[[int], float],
                         cleared: bool) -> None:
        """Twilio played everything sent (``cleared`` False) or dropped the rest on a barge-in."""
        keep: list[_AgentTurn] = []
        for turn in self._agent:
            if turn.segment is not None and (cleared or turn.text_done):
                self._finish_agent_turn(turn, heard_ms(turn.segment), sent_ms(turn.segment))
            elif not cleared:  # still being spoken, or not voiced yet
                keep.append(turn)
        self._agent = keep

    def _finish_agent_turn(self, turn: _AgentTurn, heard: float, sent: float) -> None:
        text, truncated = heard_text(turn.text, heard, sent)
        if text or not truncated:
            self._add(Turn(speaker="agent", text=text, started_ms=self._ms(turn.started_at), truncated=truncated,
                           heard_ms=round(min(heard, sent), 1)))

    def add_message(self, message: Message, stored: Callable[[int], None] | None = None) -> None:
        """A voicemail message, written in order with the call's other writes; ``stored(id)`` once it is."""
        self._write("add_message", self.record.call_sid, message, _stored=stored)

    @property
    def store(self) -> CallStore:
        return self._store

    def update(self, **fields: Any) -> None:
        """Record fields that change mid-call (barge-ins, first reply), so a live record is current."""
        self._write("update_call", self.record.call_sid, **fields)

    def add_usage(self, tokens: dict[str, int]) -> None:
        for name, count in tokens.items():
            self.usage[name] = self.usage.get(name, 0) + count

    def _add(self, turn: Turn) -> None:
        self._write("add_turn", self.record.call_sid, turn)

    async def close(self, heard_ms: Callable[[int], float], sent_ms: Callable[[int], float], **ending: Any) -> None:
        """The call is over: settle the last turns, write the ending, wait (bounded) for the writes."""
        self.playback_settled(heard_ms, sent_ms, cleared=True)
        ending.setdefault("ended_at", datetime.now(timezone.utc))
        if self.usage:
            ending.setdefault("usage", self.usage)
        self._write("update_call", self.record.call_sid, **ending)
        self._writes.put_nowait(None)
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_TIMEOUT_SECS)
            except asyncio.TimeoutError:
                logger.error(f"call {self.record.call_sid}: the database did not take the call's end in "
                             f"{CLOSE_TIMEOUT_SECS:.0f} s")
