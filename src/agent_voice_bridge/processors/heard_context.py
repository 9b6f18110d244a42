"""The conversation around a cascade's LLM: pipecat's context aggregators, told what the caller heard.

The builder puts a user aggregator just before the LLM and an assistant
aggregator after ``twilio.output``, so a chain file never names them. Turns are
the chain's own: ``vad.interrupter`` announces when the caller starts and stops
(``UserStarted/StoppedSpeakingFrame``) and does the barge-in, so the user
aggregator adopts those turns and only waits for the transcript: a finalized one
(a segmented STT such as Whisper gives one per utterance) ends the turn at once,
others settle first (:class:`TranscriptTurnStop`).

Twilio buffers what the bridge sends, so when the assistant aggregator sees a
reply's text its audio has been *sent*, not heard. Each piece of text is noted
with where its audio ends in the output segment (a sentence's text comes after
its audio; a word-timestamp TTS's words come with theirs). On a barge-in the
pieces are cut at the milliseconds the caller heard (``call.playback``, from
Twilio's mark echoes): a piece heard in part keeps that share of its words, and
assistant messages already in the context are trimmed the same way, so the
model remembers saying only what the caller heard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import InterruptionFrame, TextFrame, TranscriptionFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMAssistantAggregator,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.turns.user_start.external_user_turn_start_strategy import (
    ExternalUserTurnStartStrategy,
)
from pipecat.turns.user_stop.external_user_turn_stop_strategy import (
    ExternalUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.string import TextPartForConcatenation, concatenate_aggregated_text

from agent_voice_bridge.transports.call_info import CallInfo

TRANSCRIPT_SETTLE_SECS = 0.25
"""After the caller stops, a transcript not marked final that saw no newer one for this long ends the turn."""


class TranscriptTurnStop(ExternalUserTurnStopStrategy):
    """pipecat's external turn stop, ending the turn on a finalized transcript instead of settling.

    Why: the settle wait is for a streaming STT (Deepgram) whose final results for one
    utterance may come in several pieces after the caller stops. A transcript marked
    ``finalized`` (every one from a segmented STT like Whisper; a streaming STT's answer
    to its finalize request) is the utterance's last, so waiting 250 ms more buys nothing.
    """

    async def _handle_transcription(self, frame: TranscriptionFrame):
        await super()._handle_transcription(frame)
        if frame.finalized:
            await self._maybe_trigger_user_turn_stopped()


def conversation_for(llm: Any, call: CallInfo | None) -> tuple[LLMUserAggregator, HeardAssistantAggregator]:
    """The aggregator pair for one call's LLM, sharing the LLM's seeded context (or an empty one)."""
    context = getattr(llm, "initial_context", None) or LLMContext()
    turns = UserTurnStrategies(start=[ExternalUserTurnStartStrategy(enable_interruptions=False)],
                               stop=[TranscriptTurnStop(timeout=TRANSCRIPT_SETTLE_SECS)])
    user = LLMUserAggregator(context, params=LLMUserAggregatorParams(user_turn_strategies=turns),
                             _realtime_service_mode=False)
    assistant = HeardAssistantAggregator(context, call=call, _realtime_service_mode=False,
                                         _paired_user_aggregator=user)
    return user, assistant


@dataclass
class _Piece:
    """A piece of the reply's text and the span of its audio in its output segment (ms)."""

    part: TextPartForConcatenation
    segment: int
    start_ms: float
    end_ms: float
    message: dict | None = None  # the context message it went into, once committed


class HeardAssistantAggregator(LLMAssistantAggregator):
    """pipecat's assistant aggregator that keeps only what the caller heard of an interrupted reply."""

    def __init__(self, context: LLMContext, *, call: CallInfo | None = None, **kwargs: Any):
        super().__init__(context, **kwargs)
        self._playback = call.playback if call is not None else None
        self._pieces: list[_Piece] = []

    async def _handle_text(self, frame: TextFrame):
        before = len(self._aggregation)
        await super()._handle_text(frame)
        if self._playback is None or len(self._aggregation) == before:
            return
        segment = self._playback.segment
        end = self._playback.sent_ms(segment)
        previous = next((p for p in reversed(self._pieces) if p.segment == segment), None)
        start = min(previous.end_ms, end) if previous else 0.0
        self._pieces.append(_Piece(self._aggregation[-1], segment, start, end))
        self._forget_heard()

    async def _add_aggregation_to_context(self) -> str:
        pending = [p for p in self._pieces if p.message is None]
        text = await super()._add_aggregation_to_context()
        if text and pending:
            message = self._context.messages[-1]
            for piece in pending:
                piece.message = message
        return text

    async def _handle_interruptions(self, frame: InterruptionFrame):
        if self._playback is not None and self._pieces:
            self._cut_to_heard()
        await super()._handle_interruptions(frame)
        self._pieces.clear()

    def _forget_heard(self) -> None:
        """Drop committed pieces the caller has fully heard: no barge-in can change them now."""
        assert self._playback is not None
        while self._pieces and self._pieces[0].message is not None and \
                self._playback.heard_ms(self._pieces[0].segment) >= self._pieces[0].end_ms:
            self._pieces.pop(0)

    def _cut_to_heard(self) -> None:
        assert self._playback is not None
        kept: dict[int, TextPartForConcatenation | None] = {}
        for piece in self._pieces:
            kept[id(piece.part)] = _heard_part(piece, self._playback.heard_ms(piece.segment))
        # Not yet in the context: the aggregation super() is about to commit.
        self._aggregation = [k for k in (kept.get(id(p), p) for p in self._aggregation) if k is not None]
        # Already in the context (the reply's end reached us before its audio had played).
        by_message: dict[int, tuple[dict, list[TextPartForConcatenation]]] = {}
        for piece in self._pieces:
            if piece.message is not None:
                _, parts = by_message.setdefault(id(piece.message), (piece.message, []))
                if kept[id(piece.part)] is not None:
                    parts.append(kept[id(piece.part)])
        for message, parts in by_message.values():
            text = concatenate_aggregated_text(parts) if parts else ""
            if text == message.get("content"):
                continue
            if text.strip():
                message["content"] = text
            else:
                self._context.set_messages([m for m in self._context.messages if m is not message])


def _heard_part(piece: _Piece, heard_ms: float) -> TextPartForConcatenation | None:
    """The piece whole, the share of its words heard, or None."""
    if heard_ms >= piece.end_ms:
        return piece.part
    if heard_ms <= piece.start_ms or piece.end_ms <= piece.start_ms:
        return None
    text = piece.part.text
    words = text.split()
    count = int(len(words) * (heard_ms - piece.start_ms) / (piece.end_ms - piece.start_ms))
    if count == 0:
        return None
    lead = text[: len(text) - len(text.lstrip())]
    return TextPartForConcatenation(lead + " ".join(words[:count]), piece.part.includes_inter_part_spaces)
