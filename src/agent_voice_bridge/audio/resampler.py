"""Streaming polyphase FIR resampler for telephony audio (pure numpy).

Why this exists instead of soxr / libsamplerate "very high quality":

* A phone call carries 300–3400 Hz (G.711 at 8 kHz). Nothing above 3.4 kHz survives
  the network anyway, so the filter only has to be flat up to 3.4 kHz and make sure
  whatever aliases (or whatever image the upsampler creates) lands above 3.4 kHz and
  is at least 60 dB down. The transition band can therefore be wide (3.4–4.6 kHz at
  8 kHz), and a wide transition band means a short filter: a few dozen taps per phase.
* Every sample an FIR filter holds back is latency added to a conversation. soxr's
  VHQ setting holds back 64–150 ms, which a caller hears as the agent being slow to
  answer and slow to stop when interrupted. This filter holds back under 2 ms.
* It is stateful and seamless: feeding a stream in arbitrarily sized chunks gives the
  very same samples as feeding it in one piece, and each chunk yields exactly the
  output samples whose input has arrived (160 in → 320 out for 8→16 kHz), so frame
  sizes downstream stay predictable.

Design: ratio L/M = out_rate/in_rate reduced by the gcd. Conceptually the input is
upsampled by L (zeros inserted), lowpassed at rate L·in_rate and every M-th sample kept.
Polyphase: output n sits at upsampled position t = n·M; it uses phase p = t mod L of the
filter and input index i = t // L: ``y[n] = Σ_k h[p + k·L] · x[i − k]``. The lowpass is
a Kaiser-windowed sinc with passband edge 0.425·min_rate, stopband edge 0.575·min_rate
(cutoff halfway, i.e. at the lower Nyquist), 60 dB attenuation and gain L. It is
designed once per rate pair and cached module-wide, so creating a resampler per call
costs nothing.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

PASSBAND_EDGE = 0.425
"""Passband edge as a fraction of the lower rate: 3400 Hz at 8 kHz, the top of the phone band."""

STOPBAND_EDGE = 0.575
"""Stopband edge as a fraction of the lower rate: 4600 Hz at 8 kHz, so aliases fold above 3400 Hz."""

ATTENUATION_DB = 60.0
"""Stopband attenuation target; comfortably below G.711's own ~38 dB SNR."""

_DESIGN_MARGIN_DB = 1.0
"""Kaiser's beta/length formulas are empirical and land up to ~0.6 dB short; aim a bit higher."""


class _Design(NamedTuple):
    """Everything derived from a rate pair; immutable and shared between resamplers."""

    up: int  # L
    down: int  # M
    taps: int  # K, taps per phase
    length: int  # N, prototype filter length (before zero padding to K·L)
    delay: int  # D, group delay in samples at the upsampled rate L·in_rate
    coeffs: np.ndarray  # (L, K) float64, row p = h[p::L] reversed (oldest input first)
    prototype: np.ndarray  # (N,) float64, the full lowpass at rate L·in_rate


@lru_cache(maxsize=64)
def _design(in_rate: int, out_rate: int) -> _Design:
    """Kaiser-windowed sinc lowpass for one rate pair, split into polyphase rows.

    The group delay D is rounded up so that it is a whole number of samples at both the
    input and the output rate whenever that costs at most 25% more taps (it does for
    every telephony ratio): then a round trip such as 8k→16k→8k is delayed by a whole
    number of samples, which makes alignment (echo references, tests) exact.
    """
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    fs_up = float(up * in_rate)
    min_rate = float(min(in_rate, out_rate))
    f_pass = PASSBAND_EDGE * min_rate
    f_stop = STOPBAND_EDGE * min_rate
    cutoff = 0.5 * (f_pass + f_stop)

    a = ATTENUATION_DB + _DESIGN_MARGIN_DB
    if a > 50.0:
        beta = 0.1102 * (a - 8.7)
    elif a >= 21.0:
        beta = 0.5842 * (a - 21.0) ** 0.4 + 0.07886 * (a - 21.0)
    else:
        beta = 0.0
    d_omega = 2.0 * math.pi * (f_stop - f_pass) / fs_up
    n_kaiser = math.ceil((a - 7.95) / (2.285 * d_omega)) + 1
    d_min = math.ceil((n_kaiser - 1) / 2)
    delay = d_min
    for step in (up * down, down, up):
        candidate = -(-d_min // step) * step
        if candidate <= 1.25 * d_min + 1:
            delay = candidate
            break
    length = 2 * delay + 1

    n = np.arange(length, dtype=np.float64) - delay
    fc = cutoff / fs_up  # cycles per upsampled sample
    h = up * 2.0 * fc * np.sinc(2.0 * fc * n) * np.kaiser(length, beta)
    h[np.abs(h) < 1e-12] = 0.0  # the sinc's zero crossings, exact (float leaves ~1e-17 there)

    taps = -(-length // up)
    padded = np.zeros(taps * up, dtype=np.float64)
    padded[:length] = h
    coeffs = np.ascontiguousarray(padded.reshape(taps, up).T[:, ::-1])
    coeffs.setflags(write=False)
    h.setflags(write=False)
    return _Design(up, down, taps, length, delay, coeffs, h)


class _PhaseRun(NamedTuple):
    """The outputs of one chunk that use one filter phase: every ``out.step``-th output, on evenly spaced inputs."""

    out: slice  # which outputs of the chunk
    first_row: int  # window start (index into [history | chunk]) of the first of them
    row_step: int  # how far the window moves from one of them to the next
    count: int
    phase: int


class _Plan(NamedTuple):
    """Where each output of a chunk (phase offset, length) reads its input, grouped by filter phase."""

    count: int
    runs: tuple[_PhaseRun, ...]
    next_offset: int


@lru_cache(maxsize=256)  # a stream repeats 1–3 chunk shapes; entries are a few hundred bytes
def _plan(in_rate: int, out_rate: int, offset: int, n_in: int) -> _Plan:
    """Group a chunk's outputs by phase; cached because a stream repeats the same 20 ms shape.

    ``offset`` is the upsampled position of the next output relative to the first sample
    of this chunk (0 ≤ offset < M). Outputs at offset + j·M < L·n_in can be produced now.
    Output j uses phase (offset + j·M) mod L, which repeats every L outputs, and the window
    ending at input (offset + j·M) // L, which then moves by M inputs: so each phase's
    outputs are one strided run, computed as one matrix-vector product over a strided view.
    """
    d = _design(in_rate, out_rate)
    span = d.up * n_in
    count = max(0, -(-(span - offset) // d.down))
    runs = []
    for first in range(min(d.up, count)):
        t = offset + d.down * first
        n = len(range(first, count, d.up))
        runs.append(_PhaseRun(slice(first, count, d.up), t // d.up, d.down, n, t % d.up))
    return _Plan(count, tuple(runs), offset + count * d.down - span)


class _ChunkWork(NamedTuple):
    """Per resampler and chunk shape: a buffer for [history | chunk] and strided window views onto it."""

    buffer: np.ndarray
    views: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    """Per phase: (its outputs, a view of ``out``; windows [count, K]; coefficients [K]), or for a phase with a
    single non-zero tap k: (outputs, that tap's input column [count], its coefficient)."""
    out: np.ndarray


class PolyphaseResampler:
    """Stateful int16 mono resampler; one instance per direction of one call.

    ``process`` accepts any byte count (even a split sample) and returns exactly the
    output samples whose newest input has arrived, so nothing is buffered beyond the
    filter's own history and the only latency is ``delay_ms``.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if int(in_rate) != in_rate or int(out_rate) != out_rate or in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"rates must be positive integers, got {in_rate!r} → {out_rate!r}")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self._passthrough = self.in_rate == self.out_rate
        self._design = None if self._passthrough else _design(self.in_rate, self.out_rate)
        self.reset()

    def reset(self) -> None:
        """Forget all history (after a barge-in the old audio must not bleed into the new)."""
        self._pending = b""
        self._offset = 0
        taps = 1 if self._design is None else self._design.taps
        self._history = np.zeros(taps - 1, dtype=np.float64)
        self._work: dict[tuple[int, int], _ChunkWork] = {}

    @property
    def delay_ms(self) -> float:
        """Group delay held back by the filter, in milliseconds (0 for a pass-through)."""
        if self._design is None:
            return 0.0
        return 1000.0 * self._design.delay / (self._design.up * self.in_rate)

    @property
    def filter_length(self) -> int:
        """Length of the prototype lowpass at the upsampled rate (0 for a pass-through)."""
        return 0 if self._design is None else self._design.length

    def process(self, pcm: bytes) -> bytes:
        """Resample little-endian int16 mono bytes; an odd trailing byte waits for the next call."""
        if self._passthrough:
            return pcm
        data = self._pending + bytes(pcm) if self._pending else pcm
        whole = len(data) & ~1
        self._pending = bytes(data[whole:])
        x = np.frombuffer(data, dtype="<i2", count=whole // 2)
        return self.process_array(x).astype("<i2", copy=False).tobytes()

    def process_array(self, x: np.ndarray) -> np.ndarray:
        """Resample an int16 array, continuing the stream; returns int16 (rounded, clipped)."""
        if self._passthrough:
            return np.asarray(x, dtype=np.int16)
        d = self._design
        assert d is not None
        x = np.asarray(x)
        if x.ndim != 1:
            raise ValueError("mono audio expected (1-D array)")
        n_in = x.shape[0]
        if n_in == 0:
            return np.zeros(0, dtype=np.int16)
        plan = _plan(self.in_rate, self.out_rate, self._offset, n_in)
        work = self._work.get((self._offset, n_in)) or self._prepare(plan, n_in)
        history = d.taps - 1
        work.buffer[:history] = self._history
        work.buffer[history:] = x
        self._history[:] = work.buffer[n_in:]
        self._offset = plan.next_offset
        for out, windows, coeffs in work.views:
            if windows.ndim == 1:  # a phase with one tap: a scaled copy, no product
                np.multiply(windows, coeffs, out=out)
            else:
                np.matmul(windows, coeffs, out=out)
        y = work.out
        np.rint(y, out=y)
        np.minimum(y, 32767.0, out=y)  # two ufuncs: np.clip's Python wrapper costs more than both
        np.maximum(y, -32768.0, out=y)
        return y.astype(np.int16)

    def _prepare(self, plan: _Plan, n_in: int) -> _ChunkWork:
        """The buffer and window views for one chunk shape: made once, reused for every chunk of that shape.

        The views read the buffer in place (overlapping rows, no copy), which is what makes
        a 20 ms chunk cost a few µs instead of a gather of every window.
        """
        d = self._design
        assert d is not None
        if len(self._work) >= 16:  # a stream of ever-changing chunk sizes must not grow this without bound
            self._work.clear()
        buffer = np.zeros(d.taps - 1 + n_in, dtype=np.float64)
        out = np.empty(plan.count, dtype=np.float64)
        step = buffer.strides[0]
        views = []
        for run in plan.runs:
            coeffs = d.coeffs[run.phase]
            windows = as_strided(buffer[run.first_row:], shape=(run.count, d.taps), strides=(run.row_step * step, step),
                                 writeable=False)
            (nonzero,) = np.nonzero(coeffs)
            if len(nonzero) == 1:  # upsampling by L: one phase of the half-band-like lowpass is a pure delay
                k = int(nonzero[0])
                views.append((out[run.out], windows[:, k], coeffs[k]))
            else:
                views.append((out[run.out], windows, coeffs))
        work = self._work[(self._offset, n_in)] = _ChunkWork(buffer, tuple(views), out)
        return work
