"""Echo-aware barge-in: how much of what the caller sends our own audio, played by their phone, explains.

A speakerphone or a cheap headset leaks the agent's voice back into the caller's microphone, 6–20 dB
down and 30–250 ms late. Silero scores that leak as speech, so without this every reply on such a line
interrupted itself (issue 19). The bridge knows from Twilio's mark echoes which of its audio the phone
played and when (:class:`~agent_voice_bridge.transports.playback.PlaybackTracker`), which is the
reference an echo canceller would need; here it is used more cheaply, by level:

* :class:`PlayedAudio` keeps the level of every 10 ms of the agent's audio against the time the phone
  plays it: scheduled when sent (Twilio plays its buffer back to back), corrected by each mark echo,
  cut at a ``clear``.
* :class:`EchoGate` (one per VAD) looks at a run of speech-like windows before it may start the caller's
  turn: a run whose level envelope follows what was played a little earlier, and is quieter than it, is
  the echo (Silero scores the leak as speech), not the caller.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable

import numpy as np

from agent_voice_bridge.audio.mulaw import DECODE_TABLE

BLOCK_SECS = 0.016
BLOCK_BYTES = 128  # 16 ms of 8 kHz μ-law: half a VAD window
KEEP_SECS = 3.0
SILENT_REFERENCE = 10 ** (-70 / 10)
"""Mean square (full scale 1.0) under which nothing was played that could echo (-70 dBFS)."""
ENVELOPE_FLOOR = 10 ** (-55 / 10)
"""Envelopes are compared above -55 dBFS: below, a line's hiss and μ-law's smallest steps are noise."""
ECHO_SURE_CORRELATION = 0.75
"""A run this well correlated with the reference at the echo's delay, and under it, teaches the echo's level."""
BLOCK_MARGIN_DB = 0.0
"""A block is the caller's when it is this much louder still than a run would need to be (blocks vary more)."""
LAG_LEARNING = 0.2
"""Weight of each echo-like run in the call's running correlation per delay (which delay the echo has)."""
_SCALE = np.float32(1 / 32768)


class PlayedAudio:
    """Level of each 16 ms block of the agent's audio by when the caller's phone plays it (monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, keep_secs: float = KEEP_SECS):
        self._clock = clock
        self._keep = keep_secs
        self._times: list[float] = []  # when each block starts playing (estimated)
        self._levels: list[float] = []  # its mean square, full scale 1.0
        self._first = 0  # absolute index of the block at _times[0]
        self._synced = 0  # absolute index up to which a mark echo has confirmed the schedule
        self._queue_end = -math.inf  # when the last block sent stops playing
        self._carry = b""

    @property
    def blocks_sent(self) -> int:
        """Absolute index of the next block: what a mark sent now covers."""
        return self._first + len(self._times)

    def sent(self, ulaw: bytes) -> None:
        """Agent audio (8 kHz μ-law) went to Twilio: it plays after everything queued, or now."""
        now = self._clock()
        data = self._carry + ulaw if self._carry else ulaw
        n = len(data) // BLOCK_BYTES
        self._carry = data[n * BLOCK_BYTES:]
        if not n:
            return
        x = DECODE_TABLE.take(np.frombuffer(data, np.uint8, n * BLOCK_BYTES)).reshape(n, BLOCK_BYTES) * _SCALE
        start = max(now, self._queue_end)
        self._times.extend(start + i * BLOCK_SECS for i in range(n))  # times are block starts
        self._levels.extend(np.einsum("ij,ij->i", x, x).astype(float) / BLOCK_BYTES)
        self._queue_end = start + n * BLOCK_SECS
        self._trim(now)

    def played_through(self, block: int) -> None:
        """A mark echo: the blocks before absolute index ``block`` have just finished playing."""
        i = block - self._first
        if i <= 0 or i > len(self._times):
            return
        shift = self._clock() - (self._times[i - 1] + BLOCK_SECS)
        for k in range(max(0, self._synced - self._first), len(self._times)):
            self._times[k] += shift
        self._queue_end += shift
        self._synced = block

    def cleared(self) -> None:
        """A ``clear``: nothing not yet played will play."""
        now = self._clock()
        keep = bisect_left(self._times, now)
        del self._times[keep:], self._levels[keep:]
        self._queue_end = now
        self._carry = b""
        self._synced = min(self._synced, self.blocks_sent)

    def blocks(self, since: float, until: float) -> tuple[np.ndarray, np.ndarray]:
        """Start times and levels (mean square) of the blocks that start playing in [since, until]."""
        lo = bisect_left(self._times, since)
        hi = bisect_right(self._times, until)
        return np.array(self._times[lo:hi]), np.array(self._levels[lo:hi])

    def _trim(self, now: float) -> None:
        old = bisect_left(self._times, now - self._keep)
        if old > 256:
            del self._times[:old], self._levels[:old]
            self._first += old


class EchoGate:
    """Per call: which of a run of speech-like windows are the caller, and which the echo of what was played?

    Asked once the VAD has a run long enough to start the caller's turn, with the run's 16 ms block
    energies. It compares the run's dB envelope with the played one at each delay up to ``max_delay``:

    * the echo's delay is learnt from runs far (``learn_below_db``) under the agent's level, and its level
      (dB under the reference at that delay) from runs that follow the reference closely
      (``ECHO_SURE_CORRELATION``) and are under it;
    * a run is echo when it follows the reference (correlation ≥ ``min_correlation``) and is more than
      ``margin_db`` under it, or is within ``above_echo_db`` of the learnt echo level; before a level is
      learnt, also when it is ``learn_below_db`` under the loudest played audio; always when it is
      ``floor_db`` under it;
    * once the echo level is known, a block counts as the caller's when it is louder than the echo its
      played block and their neighbours could leave (plus ``above_echo_db`` and ``BLOCK_MARGIN_DB``), so a
      short word inside a long run of echo does not make the whole run the caller's.
    """

    def __init__(self, played: PlayedAudio, *, max_delay: float = 0.3, margin_db: float = 3.0,
                 min_correlation: float = 0.6, floor_db: float = 25.0, learn_below_db: float = 8.0,
                 above_echo_db: float = 5.0):
        self._played = played
        self._lags = int(round(max_delay / BLOCK_SECS)) + 1
        self._margin = margin_db
        self._min_corr = min_correlation
        self._floor = floor_db
        self._learn_below = learn_below_db
        self._lag_corr = np.zeros(self._lags)
        self._learnt = False
        self._echo_ratio: float | None = None  # dB of the echo under the reference at its delay, once learnt
        self._above_echo = above_echo_db
        self.runs_gated = 0

    @property
    def knows_echo(self) -> bool:
        """Whether this call's echo level has been learnt."""
        return self._echo_ratio is not None

    def observe(self, energies: np.ndarray, until: float) -> None:
        """Learn from a run while the caller is quiet and the agent plays (the echo's delay and level)."""
        self._judge(energies, until)

    def caller_blocks(self, energies: np.ndarray, until: float) -> int:
        """How many of the run's blocks are the caller's: none if the run is echo; once the call's echo level is
        known, the blocks louder than the echo expected from what was played; else all of them.

        ``energies``: mean squares (full scale 1.0) of the run's 16 ms blocks, the last ending at ``until``.
        """
        verdict = self._judge(energies, until)
        if verdict is None:
            return len(energies)
        echo, expected = verdict
        if echo:
            return 0
        if expected is None:
            return len(energies)
        return int(np.count_nonzero(energies > expected))

    def is_echo(self, energies: np.ndarray, until: float) -> bool:
        """Whether the run as a whole is the echo of what was played (see :meth:`caller_blocks`)."""
        verdict = self._judge(energies, until)
        return verdict is not None and verdict[0]

    def _judge(self, energies: np.ndarray, until: float) -> tuple[bool, np.ndarray | None] | None:
        """None: nothing was played that could echo; else (the run is echo, each block's loudest echo or None)."""
        n = len(energies)
        since = until - n * BLOCK_SECS
        times, levels = self._played.blocks(since - (self._lags - 1) * BLOCK_SECS - BLOCK_SECS, until)
        if not len(levels) or levels.max() < SILENT_REFERENCE:
            return None
        # reference[l, i]: the level played l blocks before the run's block i (0 where nothing played)
        grid = since + np.arange(n) * BLOCK_SECS
        ref = np.zeros((self._lags, n))
        idx = np.searchsorted(times, grid[None, :] - np.arange(self._lags)[:, None] * BLOCK_SECS - BLOCK_SECS / 2)
        ok = idx < len(times)
        hit = np.zeros_like(ok)
        hit[ok] = np.abs(times[idx[ok]] - (grid[None, :] - np.arange(self._lags)[:, None] * BLOCK_SECS)[ok]) < BLOCK_SECS / 2
        ref[hit] = levels[idx[hit]]
        ref_mean = ref.mean(axis=1)
        caller_mean = float(np.mean(energies))
        loudest = float(ref_mean.max())
        if loudest < SILENT_REFERENCE:
            return None
        loudest_ratio = 10 * math.log10(max(caller_mean, 1e-12) / loudest)
        if loudest_ratio < -self._floor:
            self.runs_gated += 1
            return True, None
        c = 10 * np.log10(np.maximum(energies, ENVELOPE_FLOOR))
        r = 10 * np.log10(np.maximum(ref, ENVELOPE_FLOOR))
        c = c - c.mean()
        r = r - r.mean(axis=1, keepdims=True)
        denom = np.sqrt((c @ c) * np.einsum("ij,ij->i", r, r)) + 1e-9
        corr = (r @ c) / denom
        if loudest_ratio < -self._learn_below:  # quieter than a caller could be: mostly echo, learn its delay
            self._lag_corr += LAG_LEARNING * (corr - self._lag_corr)
            self._learnt = True
        lag = int(np.argmax(self._lag_corr)) if self._learnt else int(np.argmax(corr))
        ratio = 10 * math.log10(max(caller_mean, 1e-12) / max(float(ref_mean[lag]), 1e-12))
        if corr[lag] >= ECHO_SURE_CORRELATION and ratio < -self._margin:
            # surely echo: its level under the reference at its delay is the call's echo level
            self._echo_ratio = ratio if self._echo_ratio is None else self._echo_ratio + LAG_LEARNING * (ratio - self._echo_ratio)
        if self._echo_ratio is None:  # the echo's level is not known yet: what is that far under the agent is echo
            echo = loudest_ratio < -self._learn_below or (corr[lag] >= self._min_corr and ratio < -self._margin)
        else:
            echo = ref_mean[lag] >= SILENT_REFERENCE and (
                (corr[lag] >= self._min_corr and ratio < -self._margin) or ratio < self._echo_ratio + self._above_echo)
        self.runs_gated += echo
        expected = None
        if self._echo_ratio is not None:  # a block's echo can come from its neighbours too (the path's filter smears it)
            near = ref[max(0, lag - 1):lag + 2].max(axis=0)
            expected = np.maximum(near * 10 ** ((self._echo_ratio + self._above_echo + BLOCK_MARGIN_DB) / 10),
                                  ENVELOPE_FLOOR)
        return bool(echo), expected
