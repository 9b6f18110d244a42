"""Silero VAD for every call in the process: one model, per-call state, one batched inference.

Scoring one 32 ms window costs ~60 µs, nearly all of it onnxruntime's fixed cost per
``run`` (graph walk, input checks, small-kernel dispatch), not arithmetic. The model
(Silero v5, the ``.onnx`` pipecat ships) takes a batch dimension with a recurrent
state per row, so the windows of every live call can be scored in one ``run``: that
fixed cost is paid once per batch instead of once per call.

* :class:`SileroStream` is one call's audio stream: the model's recurrent state, the
  context (the last samples of the previous window, which v5 prepends to each window)
  and pipecat's periodic state reset.
* :class:`SileroBatcher` (one per event loop, :meth:`SileroBatcher.current`) collects
  the windows streams submit and scores each sample rate's in one inference when the
  batch is full, when every open stream has a window waiting (nothing more can join, so
  a lone call never waits), or a few milliseconds after the first window arrived. It
  then calls each submission's callback synchronously with its speech probability.

Inference runs in the event loop's thread (one intra/inter-op thread): a batch of 50
calls costs well under a millisecond, less than a thread hop per call would.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from functools import cache
from importlib import resources

import numpy as np
import onnxruntime
from loguru import logger

WINDOW = {16000: 512, 8000: 256}
"""Samples per window the model scores (32 ms at both rates)."""
CONTEXT = {16000: 64, 8000: 32}
"""Samples of the previous window prepended to each one."""

# pipecat's reset policy (pipecat/audio/vad/silero.py, SileroVADAnalyzer._maybe_reset_model):
# non-speech (music, long silence at 8 kHz) drifts the recurrent state until it under-reports the
# speech that follows, so the state is cleared about every 2 s of audio, but only while the VAD is
# quiet and the last 5 windows (~160 ms) all scored under 0.1: never inside a word.
RESET_INTERVAL_SECS = 2.0
RESET_MAX_CONFIDENCE = 0.1
RESET_LOW_CONFIDENCE_WINDOWS = 5
# A reset is due after a window that scored low, but that window may be the soft first 32 ms of a word: a
# bare zero state then ramps up again inside the word and scores half of a 300 ms "uh-huh" as speech, once
# every 2 s (issue 19). So the fresh state is warmed on the last windows, as if it had heard them.
RESET_WARM_WINDOWS = 4

MAX_BATCH = 64
MAX_DELAY_SECS = 0.004
"""How long the first waiting window waits for others: small next to the VAD's start_secs."""

Callback = Callable[[float], None]


def model_path() -> str:
    return str(resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx"))


@cache
def shared_session() -> onnxruntime.InferenceSession:
    """The process's one ONNX session (~20 ms and ~10 MB to load; ``run`` is thread-safe)."""
    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(model_path(), providers=["CPUExecutionProvider"], sess_options=opts)


_SR = {rate: np.array(rate, dtype=np.int64) for rate in WINDOW}
_ZERO_STATE = np.zeros((2, 128), np.float32)
_ZERO_CONTEXT = {rate: np.zeros(n, np.float32) for rate, n in CONTEXT.items()}


def infer(rate: int, x: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score ``x`` [batch, context + window] from ``states`` [2, batch, 128].

    Returns the speech probabilities [batch] and the next states [2, batch, 128].
    """
    prob, state = shared_session().run(None, {"input": x, "state": states, "sr": _SR[rate]})
    return prob[:, 0], state


class SileroStream:
    """One call's audio as the model sees it: recurrent state, context and reset bookkeeping.

    The owner submits windows of float32 samples in [-1, 1) one at a time, in order, and
    keeps :attr:`may_reset` true while its VAD is quiet (pipecat's condition for a reset).
    """

    __slots__ = ("rate", "window", "state", "context", "may_reset", "_reset_windows",
                 "_since_reset", "_low", "_batcher", "_pending", "_recent")

    def __init__(self, rate: int, batcher: SileroBatcher | None = None):
        if rate not in WINDOW:
            raise ValueError(f"Silero VAD needs 8000 or 16000 Hz audio, not {rate}")
        self.rate = rate
        self.window = WINDOW[rate]
        self.state = _ZERO_STATE
        self.context = _ZERO_CONTEXT[rate]
        self.may_reset = True
        self._reset_windows = round(RESET_INTERVAL_SECS * rate / self.window)
        self._since_reset = 0
        self._low = 0
        self._recent: deque[np.ndarray] = deque(maxlen=RESET_WARM_WINDOWS)  # model input rows, for a reset
        self._batcher = batcher
        self._pending = False
        if batcher is not None:
            batcher.open(self)

    def submit(self, window: np.ndarray, callback: Callback) -> None:
        """Queue ``window`` for the next batch; ``callback(probability)`` runs when it is scored."""
        assert self._batcher is not None, "a stream without a batcher can only score()"
        self._batcher.submit(self, window, callback)

    def score(self, window: np.ndarray) -> float:
        """Score ``window`` now, alone (a batch of one): the reference the batcher must match."""
        x = np.concatenate((self.context, window))[None]
        prob, state = infer(self.rate, x, self.state[:, None])
        self.scored(x[0], state[:, 0], float(prob[0]))
        return float(prob[0])

    def flush(self) -> None:
        """Score whatever windows are waiting now (before a stream's last events are due)."""
        if self._batcher is not None:
            self._batcher.flush()

    def close(self) -> None:
        """Leave the batcher; a window still waiting is dropped, its callback never runs."""
        if self._batcher is not None:
            self._batcher.close(self)
            self._batcher = None

    def scored(self, x: np.ndarray, state: np.ndarray, prob: float) -> None:
        """Take the model's output for input row ``x``, then reset if one is due (from the next window on)."""
        self.state = state
        self.context = x[-len(self.context):]
        self._recent.append(x)
        self._since_reset += 1
        self._low = self._low + 1 if prob < RESET_MAX_CONFIDENCE else 0
        if self._since_reset >= self._reset_windows and self.may_reset and self._low >= RESET_LOW_CONFIDENCE_WINDOWS:
            self._reset()

    def _reset(self) -> None:
        """pipecat's reset (a zero state), then the last windows again, so the state knows the latest audio."""
        recent = np.stack(self._recent)
        recent[0, :len(self.context)] = 0.0  # the first row's context came before the reset
        state = _ZERO_STATE[:, None]
        for row in recent:
            _, state = infer(self.rate, row[None], state)
        self.state = state[:, 0]
        self._since_reset = 0


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SileroBatcher] = weakref.WeakKeyDictionary()


class SileroBatcher:
    """Scores the waiting windows of all streams of one event loop in one inference per sample rate."""

    def __init__(self, *, max_batch: int = MAX_BATCH, max_delay: float = MAX_DELAY_SECS):
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._open = 0
        self._pending: list[tuple[SileroStream, np.ndarray, Callback]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0  # inferences run, and windows scored: for measurements
        self.windows = 0

    @classmethod
    def current(cls) -> SileroBatcher:
        """The running event loop's batcher (its timer lives on that loop)."""
        loop = asyncio.get_running_loop()
        batcher = _batchers.get(loop)
        if batcher is None:
            batcher = _batchers[loop] = cls()
        return batcher

    def open(self, stream: SileroStream) -> None:
        self._open += 1

    def close(self, stream: SileroStream) -> None:
        self._open -= 1
        if stream._pending:
            stream._pending = False
            self._pending = [p for p in self._pending if p[0] is not stream]
        if self._pending and len(self._pending) >= self._open:
            self.flush()  # the one stream the others were waiting for has gone
        elif not self._pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def submit(self, stream: SileroStream, window: np.ndarray, callback: Callback) -> None:
        if stream._pending:
            self.flush()  # its next window needs the state this one leaves
        stream._pending = True
        self._pending.append((stream, window, callback))
        if len(self._pending) >= self._open or len(self._pending) >= self.max_batch:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay, self.flush)

    def flush(self) -> None:
        """Score every waiting window now and run their callbacks (in submission order within a rate)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        for rate in {stream.rate for stream, _, _ in pending}:
            group = [p for p in pending if p[0].rate == rate] if len(pending) > 1 else pending
            for start in range(0, len(group), self.max_batch):
                self._score(rate, group[start:start + self.max_batch])

    def _score(self, rate: int, group: list[tuple[SileroStream, np.ndarray, Callback]]) -> None:
        context = CONTEXT[rate]
        x = np.empty((len(group), context + WINDOW[rate]), np.float32)
        states = np.empty((2, len(group), 128), np.float32)
        for i, (stream, window, _) in enumerate(group):
            x[i, :context] = stream.context
            x[i, context:] = window
            states[:, i] = stream.state
        try:
            probs, next_states = infer(rate, x, states)
        except Exception:
            logger.exception("Silero inference failed; scoring the batch as silence")
            probs, next_states = np.zeros(len(group), np.float32), states
        self.batches += 1
        self.windows += len(group)
        for i, (stream, _, callback) in enumerate(group):
            stream._pending = False
            prob = float(probs[i])
            stream.scored(x[i], next_states[:, i], prob)
            try:
                callback(prob)
            except Exception:
                logger.exception("Silero window callback failed")
