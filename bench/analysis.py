"""Turning one simulated call (sent and heard audio on one 8 kHz clock) into numbers.

* **Added latency**, per utterance: the lag that best aligns the log-RMS envelope of
  what the caller said with the envelope of what the caller heard (normalised
  cross-correlation, 1 ms resolution, computed with FFTs). The simulated Twilio plays
  a reply at the first 20 ms tick after it arrives, so even a bridge that answered
  in zero time would measure 20 ms: that is the caller clock's floor, not the bridge.
* **Output gaps**: the simulated Twilio plays silence when its buffer runs dry; every
  ``audio_end`` … ``audio_start`` pair in the call's events is a gap the caller heard.
* **Completeness**: audio bytes received / audio bytes sent.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from agent_voice_bridge.transports.simulated_caller import CallResult

RATE = 8000
HOP = 8  # samples: 1 ms
WINDOW = 40  # samples: 5 ms RMS window
MARGIN_MS = 60
MAX_LAG_MS = 3000
REANCHOR_BEFORE_MS = 300
REANCHOR_AFTER_MS = 1000
MIN_CORRELATION = 0.6
"""Below this the heard audio does not look like the utterance at any lag: counted as unmatched."""


def log_envelope(pcm: np.ndarray) -> np.ndarray:
    """5 ms RMS in dB every 1 ms (index = milliseconds since the stream started)."""
    x = np.asarray(pcm, dtype=np.float64)
    if len(x) < WINDOW:
        return np.zeros(0)
    c = np.concatenate(([0.0], np.cumsum(x * x)))
    starts = np.arange(0, len(x) - WINDOW + 1, HOP)
    rms = np.sqrt(np.maximum(c[starts + WINDOW] - c[starts], 0.0) / WINDOW)
    return 20.0 * np.log10(rms + 1.0)


def best_lag(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """Lag ``L`` (≥ 0) maximising corr(a, b[L:L+len(a)]); returns (L, correlation)."""
    m = len(a)
    if m < 2 or len(b) < m:
        return -1, 0.0
    a0 = a - a.mean()
    na = float(np.linalg.norm(a0))
    if na == 0.0:
        return -1, 0.0
    lags = len(b) - m + 1
    nfft = 1 << (len(b) + m - 1).bit_length()
    num = np.fft.irfft(np.fft.rfft(b, nfft) * np.conj(np.fft.rfft(a0, nfft)), nfft)[:lags]
    c1 = np.concatenate(([0.0], np.cumsum(b)))
    c2 = np.concatenate(([0.0], np.cumsum(b * b)))
    s1 = c1[m:m + lags] - c1[:lags]
    s2 = c2[m:m + lags] - c2[:lags]
    var = np.maximum(s2 - s1 * s1 / m, 0.0)
    den = na * np.sqrt(var)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(den > 1e-9, num / den, 0.0)
    peak = float(corr.max())
    if peak < MIN_CORRELATION:
        return int(np.argmax(corr)), peak
    # The conversation repeats its clips, so a later copy of this utterance can match as
    # well as the real echo. Audio comes back in order, so the real echo is the earliest
    # strong match: the first stretch within 0.1 of the best, and its highest point.
    above = corr >= max(MIN_CORRELATION, peak - 0.1)
    first = int(np.argmax(above))
    stop = first + int(np.argmin(above[first:])) if not above[first:].all() else lags
    lag = first + int(np.argmax(corr[first:stop]))
    return lag, float(corr[lag])


def utterance_latencies(result: CallResult, max_lag_ms: int = MAX_LAG_MS) -> tuple[list[float], int]:
    """Added latency (ms) of each utterance that came back, and how many did not come back at all.

    The conversation reuses a few clips, so a later copy of an utterance can match its
    envelope as well as its real echo does. The search is therefore anchored: the whole
    call's envelope (unique as a sequence) gives a first lag, and each utterance is then
    looked for from 300 ms before to 1 s after the previous utterance's lag (audio comes
    back in order; a server that falls a whole second further behind between two
    utterances has collapsed, and its later utterances count as unmatched).
    """
    sent_env = log_envelope(result.sent)
    heard_env = log_envelope(result.heard)
    if len(sent_env) < 100:
        return [], len(result.utterances)
    padded = np.concatenate((heard_env, np.zeros(max_lag_ms)))
    prev, _ = best_lag(sent_env, padded)
    first = True
    lags: list[float] = []
    unmatched = 0
    for onset, offset in result.utterances:
        s0 = max(0, int(onset * 1000) - MARGIN_MS)
        s1 = min(len(sent_env), int(offset * 1000) + MARGIN_MS)
        if s1 - s0 < 100:
            continue
        lo = 0 if first else max(0, prev - REANCHOR_BEFORE_MS)
        hi = min(max_lag_ms, max(prev, 0) + REANCHOR_AFTER_MS)
        a = sent_env[s0:s1]
        b = heard_env[s0 + lo:min(len(heard_env), s1 + hi)]
        lag, corr = best_lag(a, b)
        if lag < 0 or corr < MIN_CORRELATION:
            unmatched += 1
        else:
            prev = lag + lo
            first = False
            lags.append(float(prev))
    return lags, unmatched


def output_gaps(result: CallResult) -> list[float]:
    """Milliseconds of silence the caller heard between two stretches of played audio."""
    gaps: list[float] = []
    ended: float | None = None
    for e in result.events:
        if e.kind == "audio_end":
            ended = e.t
        elif e.kind == "audio_start" and ended is not None:
            gaps.append(round((e.t - ended) * 1000.0, 3))
            ended = None
    return gaps


def call_metrics(result: CallResult) -> dict[str, Any]:
    """Everything the load benchmark needs from one call, as plain JSON-able numbers."""
    lags, unmatched = utterance_latencies(result)
    gaps = output_gaps(result)
    sent = len(result.sent)
    bad = [e.detail for e in result.events if e.kind in ("bad_message", "timeout")]
    errors = list(bad[:3])
    if result.close_code not in (1000, None):
        errors.append(f"close code {result.close_code}")
    return {
        "sent_s": sent / RATE,
        "received_s": result.media_bytes_received / RATE,
        "completeness": result.media_bytes_received / sent if sent else 0.0,
        "latencies_ms": lags,
        "unmatched_utterances": unmatched,
        "utterances": len(result.utterances),
        "gaps_ms": gaps,
        "worst_gap_ms": max(gaps, default=0.0),
        "close_code": result.close_code,
        "errors": errors,
    }


def percentile(values: list[float], q: float) -> float | None:
    """``q``-th percentile (0–100) or None for no data; linear interpolation like numpy."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.percentile(clean, q)) if clean else None
