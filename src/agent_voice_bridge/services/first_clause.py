"""A reply's first sentence goes to the TTS clause by clause, the rest by sentences.

Why: a TTS that synthesises a whole text before it gives any audio (Piper: one
ONNX run per sentence, ~0.12–0.16 of the audio's length on this box) makes the
caller wait for the first sentence to be streamed by the LLM *and* synthesised.
"Sure, the front desk is open from nine until five." is ~0.7 s of synthesis; "Sure,"
alone ~0.15 s, and the next clause is synthesised while it plays. Only the first
sentence is cut: later sentences are synthesised while earlier audio plays anyway,
and whole sentences keep Piper's sentence prosody. The cost: a short first clause
followed by a long one leaves a pause between them (``bench/cascade.py``'s ``gap``).

A clause ends at ``,``, ``;``, ``:`` or a dash followed by whitespace (``1,000`` and
``10:30`` are not cut).
"""

from __future__ import annotations

from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

CLAUSE_ENDS = (",", ";", ":", "—", "–")


class FirstClauseAggregator(SimpleTextAggregator):
    """pipecat's sentence aggregator that also releases each clause of a reply's first sentence when complete."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._spoke = False  # this reply's first sentence has gone to the TTS

    async def _check_sentence_with_lookahead(self, char: str, *, protected_end: int = 0) -> Aggregation | None:
        result = await super()._check_sentence_with_lookahead(char, protected_end=protected_end)
        if result is not None:
            self._spoke = True
            return result
        if self._spoke or not char.isspace():
            return None
        clause = self._text.strip()
        if clause.endswith(CLAUSE_ENDS) and any(c.isalnum() for c in clause):
            self._text = ""
            return Aggregation(text=clause, type=TextType.SENTENCE)
        return None

    async def flush(self) -> Aggregation | None:
        """The reply's end: the next text begins a new reply."""
        result = await super().flush()
        self._spoke = False
        return result

    async def handle_interruption(self):
        await super().handle_interruption()
        self._spoke = False

    async def reset(self):
        await super().reset()
        self._spoke = False
