"""A stereo WAV per call: the caller on the left, the AI on the right as the caller heard it.

What we *send* is not what the caller *hears*: Twilio buffers our audio and plays
it on its own clock, and a ``clear`` drops whatever had not played yet. So the
right channel is not a log of outbound media but a model of Twilio's player
(the same one ``simulated_caller`` implements): audio starts when it arrives if
nothing is queued, else right after what is; a clear erases everything not yet
played; a mark echoed later than the model expected means playback stalled, so
the rest moves later too.

Both channels live on one clock, the call's *stream clock*: the caller's audio
position (20 ms per 160-byte frame, contiguous). Wall time maps onto it through
the least-delayed caller frame seen so far, the best estimate of when Twilio
was at a given position.

The file is written as the call goes (every ``flush_every_ms``, header sizes
rewritten each time), so a crash loses at most about that much and the file is
always a valid WAV; only the unflushed part, plus AI audio queued for the
future, is held in memory. A failing disk never breaks the call: the recorder
logs once and stops recording.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from loguru import logger

from agent_voice_bridge.audio.mulaw import decode_array
from agent_voice_bridge.private_files import open_private

__all__ = ["SAMPLE_RATE", "STALL_MS", "CallRecorder"]

SAMPLE_RATE = 8000
CHANNELS = 2
SAMPLES_PER_MS = SAMPLE_RATE // 1000
STALL_MS = 60.0
"""A mark echoed this much later than modelled means Twilio's playback stalled (not jitter)."""

_HEADER_BYTES = 44
_FRAME_BYTES = 2 * CHANNELS  # one int16 per channel
_MIN_CAPACITY = 4 * SAMPLE_RATE  # 4 s of stereo frames: enough for the usual unflushed span


def _wav_header(data_bytes: int) -> bytes:
    """The canonical 44-byte PCM header; with ``data_bytes=0`` it is a valid empty WAV."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data_bytes, b"WAVE",
        b"fmt ", 16, 1, CHANNELS, SAMPLE_RATE, SAMPLE_RATE * _FRAME_BYTES, _FRAME_BYTES, 16,
        b"data", data_bytes,
    )


class CallRecorder:
    """Records one call to ``path`` as 8 kHz 16-bit stereo: left the caller, right the AI as heard.

    Feed it every inbound payload (``caller_audio``), every outbound one
    (``agent_audio``), and the mark/clear traffic, then ``close()``. Positions
    are whole samples on the stream clock; the buffer holds rows
    ``[flushed, flushed + len)`` as interleaved (left, right) int16 so a flush is
    a single ``tobytes()``.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic, flush_every_ms: int = 1000):
        if flush_every_ms <= 0:
            raise ValueError(f"flush_every_ms must be positive, got {flush_every_ms}")
        self.path = Path(path)
        self._clock = clock
        self._flush_every = int(flush_every_ms * SAMPLES_PER_MS)
        # Stream time = wall ms - offset. Until the caller's first frame, the call starts now.
        self._offset_ms = clock() * 1000.0
        self._anchored = False
        self._caller_pos = 0  # samples of caller audio so far
        self._playhead = 0  # where the AI audio queued at Twilio ends (right channel is silent beyond)
        self._flushed = 0  # samples on disk; buffer row 0 is this position
        self._buf = np.zeros((_MIN_CAPACITY, CHANNELS), dtype=np.int16)
        self._marks: OrderedDict[str, int] = OrderedDict()  # pending mark → modelled end (samples)
        self._closed = False
        self._failed = False
        self._file: BinaryIO | None = open_private(self.path)  # lives as long as the call; 0600: a caller's voice
        self._file.write(_wav_header(0))
        self._file.flush()

    # ------------------------------------------------------------------ clock

    def stream_now(self) -> float:
        """Milliseconds on the call's stream clock (the caller's audio position, in real time)."""
        return self._clock() * 1000.0 - self._offset_ms

    def _now(self) -> int:
        # Never before what is on disk: a clock that steps back must not rewrite history.
        return max(round(self.stream_now() * SAMPLES_PER_MS), self._flushed)

    @property
    def duration_ms(self) -> float:
        """Length of the recording: on disk once closed, else what closing now would write."""
        if self._closed:
            return self._flushed / SAMPLES_PER_MS
        return max(self._caller_pos, self._now()) / SAMPLES_PER_MS

    # ------------------------------------------------------------------ events

    def caller_audio(self, mulaw: bytes) -> None:
        """One inbound payload; also re-anchors the stream clock and flushes when due."""
        if self._closed or not mulaw:
            return
        start = self._caller_pos
        end = start + len(mulaw)
        self._write(0, start, decode_array(mulaw))
        self._caller_pos = end
        # The frame ending at ``end`` was sent by Twilio at ``end``: its arrival bounds the offset.
        candidate = self._clock() * 1000.0 - end / SAMPLES_PER_MS
        self._offset_ms = candidate if not self._anchored else min(self._offset_ms, candidate)
        self._anchored = True
        limit = min(self._caller_pos, self._now())
        if limit - self._flushed >= self._flush_every:
            self._flush(limit)

    def agent_audio(self, mulaw: bytes) -> None:
        """One outbound payload: Twilio plays it when it arrives, or after what is queued."""
        if self._closed or not mulaw:
            return
        start = max(self._playhead, self._now())
        self._write(1, start, decode_array(mulaw))
        self._playhead = start + len(mulaw)

    def mark_sent(self, name: str) -> None:
        """Twilio will echo ``name`` when the audio queued so far has played (at once if none is)."""
        if self._closed:
            return
        self._marks.pop(name, None)  # a reused name means the newest one
        self._marks[name] = max(self._playhead, self._now())

    def mark_echoed(self, name: str) -> None:
        """A late echo means playback stalled: what follows the mark is heard that much later."""
        if self._closed or name not in self._marks:
            return  # not ours, a duplicate, or sent before a clear: says nothing about playback
        while True:  # marks are echoed in order: earlier pending ones have played too
            pending, end = self._marks.popitem(last=False)
            if pending == name:
                break
        now = self._now()
        if now - end <= STALL_MS * SAMPLES_PER_MS:
            return
        self._delay(at=max(end, self._flushed), by=now - end)

    def cleared(self) -> None:
        """Twilio drops everything not played yet: the caller never hears it."""
        if self._closed:
            return
        now = self._now()
        if self._playhead > now:
            self._buf[now - self._flushed:self._playhead - self._flushed, 1] = 0
        self._playhead = now
        self._marks.clear()  # their echoes come at once and mean "dropped", not "played"

    def close(self) -> None:
        """Write up to the end of the call; AI audio queued beyond it was never heard."""
        if self._closed:
            return
        self._closed = True
        self._flush(max(self._caller_pos, self._now()))
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._fail(exc)
            self._file = None
        self._buf = np.zeros((0, CHANNELS), dtype=np.int16)
        self._marks.clear()

    # ------------------------------------------------------------------ buffer

    def _write(self, channel: int, pos: int, samples: np.ndarray) -> None:
        i = pos - self._flushed
        self._reserve(i + len(samples))
        self._buf[i:i + len(samples), channel] = samples

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._buf):
            return
        grown = np.zeros((max(rows, 2 * len(self._buf)), CHANNELS), dtype=np.int16)
        grown[:len(self._buf)] = self._buf
        self._buf = grown

    def _delay(self, *, at: int, by: int) -> None:
        """Move the AI audio queued from ``at`` on ``by`` samples later, leaving silence."""
        if self._playhead > at:
            i, j = at - self._flushed, self._playhead - self._flushed
            self._reserve(j + by)
            self._buf[i + by:j + by, 1] = self._buf[i:j, 1]  # numpy handles the overlap
            self._buf[i:i + by, 1] = 0
            self._playhead += by
        self._marks = OrderedDict((name, end + by) for name, end in self._marks.items())

    def _flush(self, until: int) -> None:
        """Append rows up to ``until`` to the file, fix the header, drop them from memory."""
        n = until - self._flushed
        if n <= 0:
            return
        if self._file is not None and not self._failed:
            try:
                self._file.seek(0, 2)
                self._file.write(self._buf[:n].astype("<i2", copy=False).tobytes())
                # Past the buffer is silence (caller frames stopped before the hang-up):
                # write it in pieces rather than allocate it.
                for left in range(n - len(self._buf), 0, -SAMPLE_RATE):
                    self._file.write(bytes(min(left, SAMPLE_RATE) * _FRAME_BYTES))
                data_bytes = self._file.tell() - _HEADER_BYTES
                self._file.seek(0)
                self._file.write(_wav_header(data_bytes))
                self._file.flush()
            except OSError as exc:
                self._fail(exc)
        used = max(self._caller_pos, self._playhead, until) - self._flushed  # rows beyond are silence
        rest = used - n
        self._flushed = until
        if len(self._buf) > 2 * _MIN_CAPACITY and 4 * rest <= len(self._buf):
            # A burst (a long reply sent at once) grew the buffer: give the memory back.
            smaller = np.zeros((max(_MIN_CAPACITY, 2 * rest), CHANNELS), dtype=np.int16)
            smaller[:rest] = self._buf[n:used]
            self._buf = smaller
        else:
            self._buf[:rest] = self._buf[n:used]  # overlapping copy: numpy buffers it
            self._buf[rest:used] = 0

    def _fail(self, exc: OSError) -> None:
        if not self._failed:
            logger.error(f"call recording {self.path} stopped: {type(exc).__name__}: {exc}")
        self._failed = True
