"""Turn-taking on a phone line (issue 19): the echo of the agent's own voice, backchannels, Silero's reset.

Real server, the echo chain (the agent replays the caller's utterance: real speech), and the simulated
caller behind ``bench.turn_corpus.PhoneLine``: the echo of what its phone played, 10 dB down and 120 ms
late through a speakerphone's filter, then the PSTN band. Behaviour and order only; the latency figures
are ``python -m bench --only turns``'s.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent_voice_bridge.audio import silero_batch
from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard, WaitQuiet, run_call
from conftest import LiveServer, speech

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.turn_corpus import PhoneLine, cut_word, pcm16  # noqa: E402

CHAIN = """
server: {{host: 127.0.0.1, port: 8082}}
security: {{store: memory}}
pipeline:
  - twilio.input
  - mulaw.decode
  - resample: {{rate: 16000}}
  - vad.interrupter: {{start_secs: 0.15, stop_secs: 0.5{options}}}
  - echo
  - resample: {{rate: 8000}}
  - mulaw.encode
  - twilio.output
"""


@pytest.fixture(scope="module", params=["shipped", "before"])
def server(request) -> Iterator[tuple[str, LiveServer]]:
    """The echo line with ``vad.interrupter``'s defaults, and as it was before issue 19 (no gate, no rule)."""
    options = "" if request.param == "shipped" else ", echo_gate: false, backchannel_secs: 0"
    with LiveServer(CHAIN.format(options=options), "turns.yaml") as live:
        yield request.param, live


def long_utterance() -> np.ndarray:
    """About 4.8 s of real speech: its echo is a reply long enough to talk over."""
    return np.concatenate([speech("all-circuits-busy-now"), speech("one-moment-please"), speech("hello-world")])


def echo_line() -> PhoneLine:
    return PhoneLine(echo_db=10.0, echo_delay_ms=120.0, echo_filter="speakerphone")


async def test_the_agents_own_echo_does_not_interrupt_it(server: tuple[str, LiveServer]) -> None:
    kind, live = server
    result = await run_call(live.ws_url, [Pause(0.4), Say(long_utterance(), "long"), WaitHeard(after=5.0)],
                            line=echo_line())
    print(result.timeline())
    assert result.events_of("audio_start"), "the agent replied"
    if kind == "shipped":
        assert not result.clears, "the echo of the reply, 10 dB down, cut the reply off"
    else:
        assert result.clears, "before the echo gate, this echo cut the reply off (the test's premise)"


async def test_a_barge_in_over_the_echo_clears_once(server: tuple[str, LiveServer]) -> None:
    _, live = server
    steps = [Pause(0.4), Say(long_utterance(), "long"), WaitHeard(after=0.8),
             Say(speech("one-moment-please"), "barge-in"), WaitQuiet(idle=0.8)]
    result = await run_call(live.ws_url, steps, line=echo_line())
    print(result.timeline())
    barge_on, _ = result.utterances[1]
    clears = [t for t in result.clears if t >= barge_on]
    assert clears, "the caller talking over the agent did not interrupt it"
    assert clears[0] - barge_on <= 1.2, f"clear {clears[0] - barge_on:.2f} s after the caller's onset"


async def test_a_300_ms_backchannel_does_not_cut_the_agent_off(server: tuple[str, LiveServer]) -> None:
    kind, live = server
    uh_huh = pcm16(cut_word(speech("vm-goodbye"), 0.3))
    steps = [Pause(0.4), Say(long_utterance(), "long"), WaitHeard(after=1.0), Say(uh_huh, "uh-huh"), Pause(1.5)]
    result = await run_call(live.ws_url, steps)
    print(result.timeline())
    assert result.events_of("audio_start"), "the agent replied"
    if kind == "shipped":
        assert not result.clears, "a 300 ms 'uh-huh' cut the agent off"
    else:
        assert result.clears, "before backchannel_secs, a 300 ms word interrupted (the test's premise)"


def test_a_silero_reset_at_a_words_first_window_keeps_the_word() -> None:
    """The 2 s reset is due after a window scored under 0.1, which may be the soft onset of a word; a bare
    zero state then scored only half of the word as speech (issue 19: a short "uh-huh" missed or caught
    late at ~2 s intervals). The reset now warms the fresh state on the last windows."""
    window = silero_batch.WINDOW[16000]
    word = np.repeat(cut_word(speech("vm-goodbye"), 0.35), 2) / 32768.0  # 8 → 16 kHz, plenty for Silero
    floor = np.random.default_rng(19).standard_normal(16000 * 6) * 10 ** (-60 / 20)
    every = round(silero_batch.RESET_INTERVAL_SECS * 16000 / window)
    # the word begins in the last 5 ms of the window that the second reset follows: that window scores low
    onset = 2 * every * window - 80

    def speech_windows(resets: bool) -> tuple[int, int]:
        stream = silero_batch.SileroStream(16000)
        if not resets:
            stream._reset_windows = 10 ** 9
        audio = floor.copy()
        audio[onset:onset + len(word)] += word
        probs = [stream.score(audio[i:i + window].astype(np.float32)) for i in range(0, len(audio) - window, window)]
        return sum(p >= 0.7 for p in probs), stream._since_reset

    with_resets, since_reset = speech_windows(True)
    without, _ = speech_windows(False)
    assert since_reset < every, "the reset did happen"
    assert with_resets >= without - 1, f"{with_resets} speech windows with the reset, {without} without"


async def test_a_backchannel_over_the_echo_does_not_cut_the_agent_off(server: tuple[str, LiveServer]) -> None:
    """The gate learns the line's echo while the agent plays, so a short word inside the echo stays short."""
    kind, live = server
    uh_huh = pcm16(cut_word(speech("vm-goodbye"), 0.3))
    steps = [Pause(0.4), Say(long_utterance(), "long"), WaitHeard(after=1.2), Say(uh_huh, "uh-huh"), Pause(1.5)]
    result = await run_call(live.ws_url, steps, line=echo_line())
    print(result.timeline())
    if kind == "shipped":
        assert not result.clears, "a 300 ms 'uh-huh' over the echo cut the agent off"
    else:
        assert result.clears, "before issue 19, the echo and the word cut the reply off (the test's premise)"
