"""The turn timeline's arithmetic: moments logged out of order (observers run behind the frames) still make
the right turns, a speech-to-speech model's transcript is no "llm" step, a barge-in belongs to the reply it cut."""

from __future__ import annotations

import time

from agent_voice_bridge.observability.timeline import FROM_TTS, TurnTimeline


def timeline() -> TurnTimeline:
    return TurnTimeline(line="sales", started=100.0)


def test_segments_follow_each_other_whatever_order_the_moments_were_logged_in() -> None:
    t = timeline()
    t.note("sent", 102.010, tag=1)  # twilio.output tells at once; the observer's frames come later
    t.note("model_audio", 102.005)
    t.note("request", 101.600)
    t.note("caller_stopped", 101.000)
    t.note("turn_end", 101.500)
    t.note("played", 102.210, tag=1)
    turn, = t.turns()
    assert [(s.name, round(s.ms)) for s in turn.segments()] == [
        ("endpointing", 500), ("request", 100), ("model", 405), ("bridge", 5), ("playout", 200)]
    assert round(turn.total_ms) == 1210
    assert t.records() == [{"turn": 1, "at_ms": 1000.0, "total_ms": 1210.0, "segments": {
        "endpointing": 500.0, "request": 100.0, "model": 405.0, "bridge": 5.0, "playout": 200.0}}]


def test_a_cascade_has_stt_llm_and_tts_and_a_speech_to_speech_model_has_none() -> None:
    cascade, s2s = timeline(), timeline()
    for t, tag in ((cascade, FROM_TTS), (s2s, 0)):
        t.note("turn_end", 101.0)
        t.note("stt_final", 101.3) if t is cascade else None
        t.note("request", 101.31)
        t.note("llm_first_token", 101.5)  # the realtime model's transcript runs ahead of its audio
        t.note("model_audio", 101.7, tag)
        t.note("sent", 101.71, tag=1)
    assert [s.name for s in cascade.turns()[0].segments()] == ["stt", "request", "llm", "tts", "bridge"]
    assert [s.name for s in s2s.turns()[0].segments()] == ["request", "model", "bridge"]


def test_a_barge_in_belongs_to_the_reply_it_cut_and_the_next_reply_starts_a_new_turn() -> None:
    t = timeline()
    t.note("turn_end", 101.0)
    t.note("sent", 101.5, tag=1)
    t.note("played", 101.7, tag=1)
    t.note("onset", 102.0)
    t.note("interrupted", 102.16)
    t.note("cleared", 102.17)
    t.note("confirmed", 102.18)
    t.note("caller_stopped", 102.8)
    t.note("turn_end", 103.3)
    t.note("sent", 103.8, tag=2)
    first, second = t.turns()
    assert [(s.name, round(s.ms)) for s in first.barge_segments()] == [
        ("barge_detect", 160), ("barge_clear", 10), ("barge_confirm", 10)]
    # a moment not seen (no model audio here) folds into the next segment, so they still add up
    assert [(s.name, round(s.ms)) for s in second.segments()] == [("endpointing", 500), ("bridge", 500)]
    assert second.barge == {} and second.points["turn_end"] == 103.3
    assert "turns=2" in t.summary() and "barge_detect=160" in t.summary()


def test_a_long_call_is_worked_out_turn_by_turn_not_all_over_again() -> None:
    t = timeline()
    began = time.process_time()
    for n in range(2000):  # a couple of hours of replies: each mark echo must not redo every earlier turn
        at = 100.0 + n * 4
        t.note("caller_stopped", at)
        t.note("turn_end", at + 0.5)
        t.note("model_audio", at + 0.9)
        t.note("sent", at + 0.91, tag=n + 1)
        t.played(n + 1, at + 1.1)
    turns = t.turns()
    assert len(turns) == 2000 and {round(x.total_ms) for x in turns} == {1100}
    assert time.process_time() - began < 5.0  # ~0.3 s; redoing every turn at every echo took minutes
