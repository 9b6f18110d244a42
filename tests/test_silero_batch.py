"""One Silero model for every call: batched inference must score each stream as if it ran alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pipecat.audio.vad.silero import SileroOnnxModel

from agent_voice_bridge.audio import silero_batch
from agent_voice_bridge.audio.resampler import PolyphaseResampler
from agent_voice_bridge.audio.silero_batch import SileroBatcher, SileroStream

from conftest import speech

RATES = [8000, 16000]
NAMES = ["hello-world", "all-circuits-busy-now", "vm-goodbye", "one-moment-please"]


def windows(name: str, rate: int, lead_secs: float = 0.3) -> np.ndarray:
    """A real utterance after some digital silence, cut into the model's windows, float32 in [-1, 1)."""
    pcm = np.concatenate([np.zeros(round(lead_secs * 8000), np.int16), speech(name)])
    if rate != 8000:
        pcm = np.frombuffer(PolyphaseResampler(8000, rate).process(pcm.tobytes()), np.int16)
    w = silero_batch.WINDOW[rate]
    return pcm[: len(pcm) // w * w].astype(np.float32).reshape(-1, w) / 32768


def pipecat_probabilities(x: np.ndarray, rate: int) -> list[float]:
    """pipecat's own per-stream wrapper of the same model: the reference for context and state handling."""
    model = SileroOnnxModel.__new__(SileroOnnxModel)
    model.session = silero_batch.shared_session()
    model.sample_rates = [8000, 16000]
    model.reset_states()
    return [float(model(w, rate)[0][0]) for w in x]


@pytest.mark.parametrize("rate", RATES)
def test_a_stream_alone_scores_like_pipecat(rate: int):
    x = windows("hello-world", rate)
    stream = SileroStream(rate)
    stream.may_reset = False  # pipecat's bare model never resets
    ours = [stream.score(w) for w in x]
    np.testing.assert_allclose(ours, pipecat_probabilities(x, rate), atol=1e-5)
    assert max(ours) > 0.9 and min(ours) < 0.1  # real speech and silence, not a degenerate input


async def test_batched_probabilities_equal_unbatched():
    """Eight streams (both rates, four utterances, different offsets) scored together, window by window."""
    batcher = SileroBatcher.current()
    batcher.max_delay = 10.0  # flush only when every open stream has a window waiting
    inputs = [(rate, windows(name, rate, lead_secs=0.1 + 0.05 * i)) for rate in RATES for i, name in enumerate(NAMES)]
    n = min(len(x) for _, x in inputs)
    expected = []
    for rate, x in inputs:
        alone = SileroStream(rate)
        expected.append([alone.score(w) for w in x[:n]])

    streams = [SileroStream(rate, batcher) for rate, _ in inputs]
    got: list[list[float]] = [[] for _ in streams]
    batches = batcher.batches
    for i in range(n):
        for k, (stream, (_, x)) in enumerate(zip(streams, inputs)):
            stream.submit(x[i], got[k].append)
    assert batcher.batches - batches == 2 * n, "one inference per sample rate per step"
    for k, stream in enumerate(streams):
        np.testing.assert_allclose(got[k], expected[k], atol=1e-5, err_msg=f"stream {k}")
        stream.close()


async def test_a_stream_submitting_twice_is_scored_in_order():
    """A second window from the same stream cannot share its first one's batch: it needs that window's state."""
    batcher = SileroBatcher.current()
    batcher.max_delay = 10.0
    x = windows("vm-goodbye", 8000)[:40]
    alone = SileroStream(8000)
    expected = [alone.score(w) for w in x]
    a, b = SileroStream(8000, batcher), SileroStream(8000, batcher)  # b never submits: nothing completes a batch
    got: list[float] = []
    for w in x:
        a.submit(w, got.append)
    a.flush()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    a.close()
    b.close()


async def test_timer_scores_a_lone_waiting_window():
    batcher = SileroBatcher.current()
    a, b = SileroStream(8000, batcher), SileroStream(8000, batcher)
    got: list[float] = []
    a.submit(windows("vm-goodbye", 8000)[20], got.append)
    assert got == [], "waits for b's window..."
    await asyncio.sleep(batcher.max_delay * 3)
    assert len(got) == 1, "...but not for long"
    a.close()
    b.close()


def test_state_is_reset_during_long_quiet_stretches_only():
    """pipecat's policy: ~2 s of audio since the last reset, the VAD quiet, the last 5 windows under 0.1."""
    rate = 8000
    quiet = np.zeros((200, silero_batch.WINDOW[rate]), np.float32)
    held = SileroStream(rate)
    held.may_reset = False  # the VAD is mid-speech: never reset
    for w in quiet:
        held.score(w)
    assert np.any(held.state != 0)

    stream = SileroStream(rate)
    resets = 0
    for w in quiet:
        stream.score(w)
        resets += stream._since_reset == 0  # the state itself is warmed on the last windows after a reset
    assert resets == len(quiet) // round(2.0 * rate / silero_batch.WINDOW[rate])
