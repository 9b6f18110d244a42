"""CallRecorder: caller left, AI right as heard, on the call's stream clock, streamed to disk.

Everything runs on a fake clock: a ``Rig`` delivers caller frames at the wall time
Twilio would (a frame arrives when its last sample has been spoken, plus any
delay we give it) and fires bridge events at chosen stream times, so every
sample position below follows from the timeline alone.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from agent_voice_bridge.audio import mulaw
from agent_voice_bridge.transports.call_recorder import STALL_MS, CallRecorder
from agent_voice_bridge.transports.simulated_caller import FRAME_SAMPLES, _Playback, load_wav

SPEECH_DIR = Path(__file__).parent / "fixtures" / "speech"
T0 = 1000.0  # wall clock (s) when the stream starts; nonzero so the offset matters
MS = 8  # samples per millisecond


def speech(name: str) -> bytes:
    """A real utterance, μ-law encoded as Twilio would carry it."""
    return mulaw.encode_array(load_wav(SPEECH_DIR / f"{name}.wav"))


def tone(ms: int, hz: float = 440.0) -> bytes:
    """A sine as μ-law: easy to spot on the right channel, never confused with silence."""
    n = np.arange(ms * MS)
    pcm = (8000 * np.sin(2 * np.pi * hz * n / 8000) + 3000 * np.sign(np.sin(2 * np.pi * 7 * n / 8000) + 0.5))
    return mulaw.encode_array(pcm.astype(np.int16))


def dec(data: bytes) -> np.ndarray:
    return mulaw.decode_array(data)


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) of a recording, after checking it is the promised format."""
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getcomptype()) == (2, 2, 8000, "NONE")
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return frames[:, 0], frames[:, 1]


def nframes(path: Path) -> int:
    with wave.open(str(path), "rb") as w:
        return w.getnframes()


class Rig:
    """A recorder on a settable clock, fed caller frames as stream time advances."""

    def __init__(self, tmp_path: Path, *, caller: bytes | None = None, flush_every_ms: int = 1000,
                 delay_ms: float = 0.0):
        self.t = T0
        self.path = tmp_path / "recordings" / "nested" / "call.wav"
        self.rec = CallRecorder(self.path, clock=lambda: self.t, flush_every_ms=flush_every_ms)
        self.caller = caller if caller is not None else bytes([mulaw.SILENCE_BYTE]) * (120_000 * MS)
        self.delay_ms = delay_ms
        self.sent = 0  # caller bytes delivered

    def advance(self, ms: float) -> CallRecorder:
        """Deliver every caller frame spoken by stream time ``ms``, then set the clock there."""
        while (self.sent + FRAME_SAMPLES) / MS <= ms and self.sent < len(self.caller):
            end = self.sent + FRAME_SAMPLES
            self.t = T0 + (end / MS + self.delay_ms) / 1000
            self.rec.caller_audio(self.caller[self.sent:end])
            self.sent = end
        self.t = max(self.t, T0 + ms / 1000)
        return self.rec

    def send(self, audio: bytes, chunk_ms: int = 20) -> None:
        """Send AI audio now, in chunks as twilio.output does."""
        step = chunk_ms * MS
        for i in range(0, len(audio), step):
            self.rec.agent_audio(audio[i:i + step])


@pytest.fixture
def caller_speech() -> bytes:
    """4 s of caller audio: real speech, then silence, in whole frames."""
    audio = speech("hello-world") + speech("vm-goodbye")
    audio += bytes([mulaw.SILENCE_BYTE]) * (4000 * MS - len(audio))
    return audio[:4000 * MS]


def test_format_and_left_channel_is_the_caller_sample_exactly(tmp_path: Path, caller_speech: bytes):
    rig = Rig(tmp_path, caller=caller_speech)
    rig.advance(4000).close()
    left, right = read(rig.path)
    assert len(left) == 4000 * MS
    np.testing.assert_array_equal(left, dec(caller_speech))
    assert np.abs(left).max() > 1000  # the speech is really there
    assert not right.any()  # the AI said nothing
    assert rig.rec.duration_ms == 4000


def test_ai_audio_plays_when_sent_and_queued_audio_back_to_back(tmp_path: Path):
    rig = Rig(tmp_path)
    first, second, third = tone(400, 440), tone(300, 660), tone(200, 880)
    rig.advance(500)
    rig.send(first)  # idle: plays at once, 500–900 ms
    rig.advance(700)
    rig.send(second)  # queued behind the first: 900–1200 ms, not 700
    rig.advance(1500)
    rig.send(third)  # idle again: 1500–1700 ms, not right after the second
    rig.advance(2000).close()
    _, right = read(rig.path)
    np.testing.assert_array_equal(right[500 * MS:900 * MS], dec(first))
    np.testing.assert_array_equal(right[900 * MS:1200 * MS], dec(second))
    np.testing.assert_array_equal(right[1500 * MS:1700 * MS], dec(third))
    assert not right[:500 * MS].any()
    assert not right[1200 * MS:1500 * MS].any()
    assert not right[1700 * MS:].any()


def test_clear_silences_the_rest_and_forgets_pending_marks(tmp_path: Path):
    rig = Rig(tmp_path)
    reply, next_reply = tone(1000), tone(400, 660)
    rig.advance(200)
    rig.send(reply)  # would play 200–1200 ms
    rig.rec.mark_sent("end-of-reply")  # modelled end: 1200 ms
    rig.advance(600)
    rig.rec.cleared()  # barge-in: only 200–600 ms was heard
    rig.advance(1300)
    rig.send(next_reply)  # idle since the clear: plays at 1300, not after 1200's old queue
    rig.advance(1350)
    # The cleared mark's echo (here 150 ms after its stale modelled end) must not shift anything.
    rig.rec.mark_echoed("end-of-reply")
    rig.advance(2000).close()
    _, right = read(rig.path)
    np.testing.assert_array_equal(right[200 * MS:600 * MS], dec(reply)[:400 * MS])
    assert not right[600 * MS:1300 * MS].any()
    np.testing.assert_array_equal(right[1300 * MS:1700 * MS], dec(next_reply))
    assert not right[1700 * MS:].any()


def test_late_mark_echo_moves_what_follows_the_mark(tmp_path: Path):
    rig = Rig(tmp_path)
    a, b, c = tone(100, 440), tone(200, 660), tone(100, 880)
    rig.advance(100)
    rig.send(a)
    rig.rec.mark_sent("a")  # modelled end 200 ms
    rig.send(b)
    rig.rec.mark_sent("b")  # modelled end 400 ms
    rig.advance(350)
    rig.rec.mark_echoed("a")  # 150 ms late: Twilio stalled, b is heard from 350 ms
    rig.advance(500)
    rig.send(c)  # queued behind b's new end (550 ms), not its modelled 400
    rig.advance(560)
    rig.rec.mark_echoed("b")  # 10 ms after its shifted end: jitter, nothing moves
    rig.advance(1000).close()
    _, right = read(rig.path)
    np.testing.assert_array_equal(right[100 * MS:200 * MS], dec(a))
    assert not right[200 * MS:350 * MS].any()
    np.testing.assert_array_equal(right[350 * MS:550 * MS], dec(b))
    np.testing.assert_array_equal(right[550 * MS:650 * MS], dec(c))
    assert not right[650 * MS:].any()


@pytest.mark.parametrize("echo_at", [150, 200, 200 + STALL_MS - 1])
def test_early_or_slightly_late_echo_changes_nothing(tmp_path: Path, echo_at: float):
    rig = Rig(tmp_path)
    a, b = tone(100, 440), tone(300, 660)
    rig.advance(100)
    rig.send(a)
    rig.rec.mark_sent("a")  # modelled end 200 ms
    rig.send(b)
    rig.advance(echo_at)
    rig.rec.mark_echoed("a")
    rig.rec.mark_echoed("unknown")  # not ours: ignored
    rig.advance(800).close()
    _, right = read(rig.path)
    np.testing.assert_array_equal(right[100 * MS:500 * MS], dec(a + b))
    assert not right[500 * MS:].any()


def test_stall_found_after_a_flush_neither_loses_nor_repeats_audio(tmp_path: Path):
    rig = Rig(tmp_path, flush_every_ms=100)
    reply = tone(300)
    rig.send(reply[:100 * MS])  # 0–300 ms, with a mark after the first 100
    rig.rec.mark_sent("first-100")
    rig.send(reply[100 * MS:])
    rig.advance(250)  # 200 ms already flushed as played
    rig.rec.mark_echoed("first-100")  # 150 ms late: the unflushed rest moves
    rig.advance(600).close()
    _, right = read(rig.path)
    np.testing.assert_array_equal(right[:200 * MS], dec(reply)[:200 * MS])
    assert not right[200 * MS:350 * MS].any()
    np.testing.assert_array_equal(right[350 * MS:450 * MS], dec(reply)[200 * MS:])
    assert not right[450 * MS:].any()


def test_stream_clock_follows_the_least_delayed_caller_frame(tmp_path: Path):
    rig = Rig(tmp_path, delay_ms=80)  # the first second of frames arrives 80 ms late
    rig.advance(1000)
    rig.delay_ms = 0  # then one arrives on time: now the clock is right
    rig.advance(1020)
    rig.delay_ms = 50  # later delays do not drag it back
    rig.advance(1500)
    rig.t = T0 + 1.6  # stream time 1600 ms, though the last frame (1500 ms) arrived at 1.55 s
    reply = tone(200)
    rig.send(reply)
    rig.advance(2200).close()
    _, right = read(rig.path)
    np.testing.assert_array_equal(right[1600 * MS:1800 * MS], dec(reply))
    assert not right[:1600 * MS].any() and not right[1800 * MS:].any()


def test_before_any_caller_frame_the_clock_starts_at_construction(tmp_path: Path):
    rig = Rig(tmp_path, caller=b"")
    rig.advance(100)
    reply = tone(150)
    rig.send(reply)
    rig.advance(300).close()  # no caller audio at all: the file still spans the call
    left, right = read(rig.path)
    assert len(right) == 300 * MS
    assert not left.any()
    np.testing.assert_array_equal(right[100 * MS:250 * MS], dec(reply))
    assert not right[:100 * MS].any() and not right[250 * MS:].any()


def test_flushes_keep_a_valid_growing_wav_that_survives_a_crash(tmp_path: Path, caller_speech: bytes):
    rig = Rig(tmp_path, caller=caller_speech)
    reply = tone(1500)
    assert nframes(rig.path) == 0  # a valid, empty WAV from the start
    rig.advance(300)
    rig.send(reply)  # 300–1800 ms
    counts = []
    for ms in (990, 1000, 1990, 2000, 2500, 3000):
        rig.advance(ms)
        counts.append(nframes(rig.path))
    assert counts == [0, 8000, 8000, 16000, 16000, 24000]
    # Crash: never closed. What was flushed is on disk, sample-exact on both channels.
    left, right = read(rig.path)
    np.testing.assert_array_equal(left, dec(caller_speech)[:3000 * MS])
    np.testing.assert_array_equal(right[300 * MS:1800 * MS], dec(reply))
    assert not right[1800 * MS:].any()


def test_close_is_idempotent_and_drops_audio_queued_past_the_end(tmp_path: Path):
    rig = Rig(tmp_path)
    reply = tone(2000)
    rig.advance(500)
    rig.send(reply)  # would play until 2500 ms, but the caller hangs up at 1000
    rig.advance(1000).close()
    before = rig.path.read_bytes()
    rig.rec.close()
    rig.rec.caller_audio(b"\x00" * 160)  # late events after close are ignored
    rig.rec.agent_audio(b"\x00" * 160)
    rig.rec.cleared()
    rig.rec.close()
    assert rig.path.read_bytes() == before
    assert rig.rec.duration_ms == 1000
    left, right = read(rig.path)
    assert len(left) == 1000 * MS
    np.testing.assert_array_equal(right[500 * MS:], dec(reply)[:500 * MS])


def test_silence_after_the_caller_stops_is_written_without_holding_it(tmp_path: Path):
    rig = Rig(tmp_path, caller=tone(1000, 300))
    rig.advance(1000)
    rig.t = T0 + 20.0  # no caller frames for 19 s, then the hang-up
    rig.rec.close()
    left, right = read(rig.path)
    assert len(left) == 20_000 * MS
    np.testing.assert_array_equal(left[:1000 * MS], dec(tone(1000, 300)))
    assert not left[1000 * MS:].any() and not right.any()
    assert rig.rec.duration_ms == 20_000


def test_memory_stays_bounded_over_a_ten_minute_call(tmp_path: Path):
    minutes = 10
    caller = tone(minutes * 60_000, 300)
    rig = Rig(tmp_path, caller=caller)
    reply = tone(3000, 500)
    peak_rows = 0
    for second in range(0, minutes * 60, 10):  # a 3 s reply every 10 s, a mark after it
        rig.advance(second * 1000 + 2000)
        rig.send(reply)
        rig.rec.mark_sent(f"m{second}")
        rig.advance(second * 1000 + 5000)
        rig.rec.mark_echoed(f"m{second}")
        rig.advance(second * 1000 + 10_000)
        peak_rows = max(peak_rows, len(rig.rec._buf))
    assert peak_rows <= 8 * 8000  # a few seconds of frames, not minutes
    rig.rec.close()
    left, right = read(rig.path)
    assert len(left) == minutes * 60 * 8000
    np.testing.assert_array_equal(left, dec(caller))
    np.testing.assert_array_equal(right[592_000 * MS:595_000 * MS], dec(reply))


def test_a_burst_of_queued_audio_is_held_then_memory_is_given_back(tmp_path: Path):
    rig = Rig(tmp_path)
    reply = tone(60_000)
    rig.advance(100)
    rig.send(reply, chunk_ms=1000)  # a minute of audio sent at once: it must wait in memory
    assert len(rig.rec._buf) >= 60_000 * MS
    rig.advance(62_000)
    assert len(rig.rec._buf) <= 8 * 8000
    rig.rec.close()
    _, right = read(rig.path)
    np.testing.assert_array_equal(right[100 * MS:60_100 * MS], dec(reply))


def test_right_channel_matches_the_simulated_callers_playback(tmp_path: Path, caller_speech: bytes):
    """Drive simulated_caller's Twilio player and the recorder with the same traffic.

    The simulated caller sends frame k at 0.02·k s and plays frame k at the same
    instant; audio arriving after that plays from frame k+1. The recorder, anchored
    on frame k's end, models exactly that, so the two must agree sample for sample.
    """
    t = [T0]
    path = tmp_path / "e2e.wav"
    rec = CallRecorder(path, clock=lambda: t[0], flush_every_ms=300)
    twilio = _Playback()
    heard: list[np.ndarray] = []
    first, second = speech("one-moment-please"), speech("all-circuits-busy-now")
    outbox = {25: [first[i:i + 800] for i in range(0, len(first), 800)],  # 100 ms chunks, one per tick
              130: [second[i:i + 800] for i in range(0, len(second), 800)]}
    queued: list[bytes] = []
    marks = 0

    def echo(name: str) -> None:
        rec.mark_echoed(name)

    frames = len(caller_speech) // FRAME_SAMPLES
    for k in range(frames):
        t[0] = T0 + 0.02 * k
        rec.caller_audio(caller_speech[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES])
        frame, _, passed = twilio.take_frame()
        heard.append(mulaw.decode_array(frame))
        for name in passed:
            echo(name)
        # The bridge reacts right after the frame: send audio, a mark after it, maybe a clear.
        queued += outbox.get(k, [])
        if queued and k % 2 == 0:
            chunk = queued.pop(0)
            twilio.add_media(chunk)
            rec.agent_audio(chunk)
            name = f"m{marks}"
            marks += 1
            rec.mark_sent(name)
            if twilio.add_mark(name):
                echo(name)
        if k == 70:  # barge-in during the first reply
            queued.clear()
            _, pending = twilio.clear()
            rec.cleared()
            for name in pending:
                echo(name)
    rec.close()
    left, right = read(path)
    expected = np.concatenate(heard)
    assert len(right) == len(expected) == frames * FRAME_SAMPLES
    assert np.count_nonzero(expected) > 8000  # the simulated caller heard over a second of AI
    np.testing.assert_array_equal(right, expected)
    np.testing.assert_array_equal(left, dec(caller_speech))
