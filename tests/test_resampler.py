"""PolyphaseResampler: flat phone band, aliases/images ≥ 50 dB down, < 5 ms held back, seamless streaming."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from agent_voice_bridge.audio.resampler import PolyphaseResampler

RATIOS = [(8000, 16000), (16000, 8000), (24000, 8000), (8000, 24000), (16000, 24000), (24000, 16000)]
DOWN = [(16000, 8000), (24000, 8000), (24000, 16000)]
UP = [(8000, 16000), (8000, 24000), (16000, 24000)]
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en")

AMPLITUDE = 12000.0
TONE_SECONDS = 0.2
SETTLE_SECONDS = 0.02  # ≫ the ~1.6 ms group delay + filter length


def _ids(pairs: list[tuple[int, int]]) -> list[str]:
    return [f"{a // 1000}k->{b // 1000}k" for a, b in pairs]


def _tone(freq: float, rate: int, seconds: float = TONE_SECONDS, amplitude: float = AMPLITUDE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _stream(r: PolyphaseResampler, x: np.ndarray, chunk: int) -> np.ndarray:
    """Feed ``x`` as bytes in ``chunk``-sample frames, the way the transport does."""
    out = [r.process(x[i : i + chunk].astype("<i2").tobytes()) for i in range(0, len(x), chunk)]
    return np.frombuffer(b"".join(out), dtype="<i2").astype(np.float64)


def _resample_tone(in_rate: int, out_rate: int, freq: float) -> np.ndarray:
    """Tone through a fresh resampler in 20 ms frames; returns the settled part of the output."""
    y = _stream(PolyphaseResampler(in_rate, out_rate), _tone(freq, in_rate), in_rate // 50)
    return y[int(SETTLE_SECONDS * out_rate) :]


def _fit_amplitude(y: np.ndarray, freq: float, rate: int, start: int) -> float:
    """Least-squares amplitude of a sinusoid at ``freq`` (phase-agnostic)."""
    t = (start + np.arange(len(y))) / rate
    basis = np.column_stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)])
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(*coef))


def _db(ratio: float) -> float:
    return 20.0 * np.log10(max(ratio, 1e-12))


# --------------------------------------------------------------------------- passband


@pytest.mark.parametrize(("in_rate", "out_rate"), RATIOS, ids=_ids(RATIOS))
def test_passband_flat_within_0_1_db(in_rate: int, out_rate: int) -> None:
    worst = 0.0
    for freq in range(100, 3401, 100):
        y = _resample_tone(in_rate, out_rate, freq)
        gain_db = _db(_fit_amplitude(y, freq, out_rate, int(SETTLE_SECONDS * out_rate)) / AMPLITUDE)
        worst = max(worst, abs(gain_db))
        assert abs(gain_db) <= 0.1, f"{freq} Hz: gain {gain_db:+.3f} dB"
    # The design is far better than the requirement; catch a regression long before it fails the spec.
    assert worst < 0.05


# --------------------------------------------------------------------------- stopband


@pytest.mark.parametrize(("in_rate", "out_rate"), DOWN, ids=_ids(DOWN))
def test_alias_rejection_at_least_50_db(in_rate: int, out_rate: int) -> None:
    stop_edge = 0.575 * min(in_rate, out_rate)  # 4600 Hz for 8 kHz out
    input_rms = AMPLITUDE / np.sqrt(2)
    freqs = np.arange(stop_edge, in_rate / 2, 100.0)
    assert freqs.size > 20
    for freq in freqs:
        y = _resample_tone(in_rate, out_rate, freq)
        level = _db(np.sqrt(np.mean(y**2)) / input_rms)
        assert level <= -50.0, f"{freq:.0f} Hz in → aliased output at {level:.1f} dB"


@pytest.mark.parametrize(("in_rate", "out_rate"), UP, ids=_ids(UP))
def test_image_rejection_at_least_50_db(in_rate: int, out_rate: int) -> None:
    stop_edge = 0.575 * min(in_rate, out_rate)  # 4600 Hz for 8 kHz in
    for freq in range(100, 3401, 100):
        y = _resample_tone(in_rate, out_rate, freq)
        spectrum = np.abs(np.fft.rfft(y * signal.windows.blackmanharris(len(y)))) ** 2
        bins = np.fft.rfftfreq(len(y), 1.0 / out_rate)
        tone = spectrum[np.abs(bins - freq) <= 50].sum()
        images = spectrum[bins >= stop_edge].sum()
        level = 10 * np.log10(images / tone)
        assert level <= -50.0, f"{freq} Hz in → images above {stop_edge:.0f} Hz at {level:.1f} dB"


# --------------------------------------------------------------------------- latency and framing


@pytest.mark.parametrize(("in_rate", "out_rate"), RATIOS, ids=_ids(RATIOS))
def test_delay_is_small_and_reported_correctly(in_rate: int, out_rate: int) -> None:
    r = PolyphaseResampler(in_rate, out_rate)
    expected = r.delay_ms * out_rate / 1000.0  # in output samples
    assert 0.0 < r.delay_ms <= 5.0

    # Impulse: the peak of the response sits `delay` after the impulse's own output position.
    at = 50
    x = np.zeros(in_rate // 10, dtype=np.int16)
    x[at] = 30000
    y = _stream(PolyphaseResampler(in_rate, out_rate), x, in_rate // 50)
    peak = int(np.argmax(y)) - at * out_rate / in_rate
    assert abs(peak - expected) <= 1.0, f"impulse peak {peak} vs delay_ms → {expected}"

    # Cross-correlation against scipy's zero-phase resampler on band-limited noise.
    rng = np.random.default_rng(1)
    sos = signal.butter(8, 3400, fs=in_rate, output="sos")
    noise = signal.sosfilt(sos, rng.standard_normal(in_rate // 2))
    noise = np.rint(8000 * noise / np.std(noise)).astype(np.int16)
    y = _stream(PolyphaseResampler(in_rate, out_rate), noise, in_rate // 50)
    ref = signal.resample_poly(noise.astype(np.float64), out_rate, in_rate)
    n = min(len(y), len(ref))
    corr = signal.correlate(y[:n], ref[:n], mode="full")
    lag = int(np.argmax(corr)) - (n - 1)
    assert abs(lag - expected) <= 1.0, f"cross-correlation lag {lag} vs delay_ms → {expected}"


@pytest.mark.parametrize(("in_rate", "out_rate"), RATIOS, ids=_ids(RATIOS))
def test_every_20ms_frame_gives_exactly_20ms(in_rate: int, out_rate: int) -> None:
    r = PolyphaseResampler(in_rate, out_rate)
    frame = (np.random.default_rng(2).standard_normal(in_rate // 50) * 3000).astype("<i2").tobytes()
    for _ in range(10):
        assert len(r.process(frame)) == 2 * (out_rate // 50)


def test_frame_sizes_named_in_the_spec() -> None:
    assert len(PolyphaseResampler(8000, 16000).process(bytes(320))) == 640  # 160 → 320 samples
    assert len(PolyphaseResampler(24000, 8000).process(bytes(960))) == 320  # 480 → 160 samples


@pytest.mark.parametrize(("in_rate", "out_rate"), RATIOS + [(44100, 16000), (8000, 11025)])
def test_output_count_follows_input_immediately(in_rate: int, out_rate: int) -> None:
    """After T input samples exactly ceil(T·out/in) have come out: nothing waits beyond the filter."""
    r = PolyphaseResampler(in_rate, out_rate)
    rng = np.random.default_rng(3)
    total_in = total_out = 0
    for size in rng.integers(0, 97, 60):
        total_in += int(size)
        total_out += len(r.process_array(np.zeros(int(size), dtype=np.int16)))
        assert total_out == -(-total_in * out_rate // in_rate)


# --------------------------------------------------------------------------- streaming state


@pytest.mark.parametrize(("in_rate", "out_rate"), RATIOS + [(44100, 16000), (11025, 8000)])
def test_random_chunks_match_one_shot(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(in_rate + out_rate)
    x = (rng.standard_normal(in_rate // 4) * 9000).clip(-32768, 32767).astype("<i2").tobytes()
    one_shot = PolyphaseResampler(in_rate, out_rate).process(x)

    r = PolyphaseResampler(in_rate, out_rate)
    pieces, pos = [], 0
    while pos < len(x):
        size = int(rng.integers(0, 700))  # byte counts: odd ones split a sample in two
        pieces.append(r.process(x[pos : pos + size]))
        pos += size
    chunked = b"".join(pieces)
    assert len(chunked) == len(one_shot) == 2 * -(-(len(x) // 2) * out_rate // in_rate)
    assert chunked == one_shot


def test_full_scale_input_is_clipped_not_wrapped() -> None:
    """A full-scale square overshoots by ~27% (Gibbs); that must saturate, not wrap to the other sign."""
    half = np.tile(np.r_[np.full(20, 16383), np.full(20, -16384)], 20).astype(np.int16)
    full = (half.astype(np.int32) * 2 + (half > 0)).astype(np.int16)  # ±32767/-32768
    y_half = PolyphaseResampler(8000, 16000).process_array(half).astype(np.int32)
    raw = PolyphaseResampler(8000, 16000).process_array(full)
    assert raw.dtype == np.int16
    y_full = raw.astype(np.int32)
    assert y_full.max() == 32767 and y_full.min() == -32768
    assert np.abs(y_half).max() > 16384 * 1.2  # the overshoot is really there
    expected = np.clip(2 * y_half, -32768, 32767)
    assert np.abs(y_full - expected).max() <= 3


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (24000, 8000), (16000, 24000)])
def test_reset_forgets_history(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(4)
    before = (rng.standard_normal(1234) * 8000).astype("<i2").tobytes() + b"\x01"  # odd byte too
    after = (rng.standard_normal(in_rate // 10) * 8000).astype("<i2").tobytes()

    r = PolyphaseResampler(in_rate, out_rate)
    r.process(before)
    not_reset = r.process(after)
    r.reset()
    fresh = PolyphaseResampler(in_rate, out_rate).process(after)
    assert r.process(after) == fresh
    assert not_reset != fresh  # the history really did matter


def test_same_rate_is_pass_through() -> None:
    r = PolyphaseResampler(8000, 8000)
    data = b"\x01\x02\x03"
    assert r.process(data) is data
    assert r.delay_ms == 0.0
    x = np.arange(-5, 5, dtype=np.int16)
    np.testing.assert_array_equal(r.process_array(x), x)


def test_filter_design_is_cached() -> None:
    a, b = PolyphaseResampler(8000, 16000), PolyphaseResampler(8000, 16000)
    assert a._design is b._design
    assert PolyphaseResampler(16000, 8000).filter_length > 0


def test_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        PolyphaseResampler(0, 8000)
    with pytest.raises(ValueError):
        PolyphaseResampler(8000, -16000)


# --------------------------------------------------------------------------- real speech


def _read_prompt(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


@pytest.mark.skipif(
    not ASTERISK_SOUNDS.is_dir(),
    reason=f"{ASTERISK_SOUNDS} missing (apt-get install asterisk-core-sounds-en-wav)",
)
@pytest.mark.parametrize("prompt", ["vm-goodbye.wav", "all-circuits-busy-now.wav"])
def test_speech_roundtrip_8k_16k_8k(prompt: str) -> None:
    path = ASTERISK_SOUNDS / prompt
    if not path.exists():
        pytest.skip(f"{path} missing (apt-get install asterisk-core-sounds-en-wav)")
    x = _read_prompt(path)
    up, down = PolyphaseResampler(8000, 16000), PolyphaseResampler(16000, 8000)
    y16 = np.frombuffer(b"".join(up.process(x[i : i + 160].tobytes()) for i in range(0, len(x), 160)), "<i2")
    y = np.frombuffer(b"".join(down.process(y16[i : i + 320].tobytes()) for i in range(0, len(y16), 320)), "<i2")
    assert len(y16) == 2 * len(x) and len(y) == len(x)

    delay = (up.delay_ms + down.delay_ms) * 8  # in 8 kHz samples
    assert delay == int(delay), "round-trip delay should be whole samples"
    d = int(delay)
    a, b = x[: len(x) - d].astype(np.float64), y[d:].astype(np.float64)
    corr = np.corrcoef(a, b)[0, 1]
    assert corr >= 0.99, f"{prompt}: correlation {corr:.4f}"
    # And the delay is where the signal really is.
    xc = signal.correlate(y.astype(np.float64), x.astype(np.float64), mode="full")
    assert int(np.argmax(xc)) - (len(x) - 1) == d


def test_interruption_resets_the_agent_side_only() -> None:
    from agent_voice_bridge.processors.resample import Resampler

    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(320) / 8000)).astype(np.int16).tobytes()
    continuous = PolyphaseResampler(8000, 16000)
    expected = continuous.process(tone[:320]) + continuous.process(tone[320:])
    fresh = PolyphaseResampler(8000, 16000).process(tone[320:])
    for side, second in (("caller", expected[640:]), ("agent", fresh)):
        stage = Resampler(rate=16000, side=side)
        stage._resampler(8000).process(tone[:320])
        stage.interrupted()
        assert stage._resampler(8000).process(tone[320:]) == second, side
