"""μ-law codec: bit-exact with CPython's audioop, and the table ends that Twilio relies on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from agent_voice_bridge.audio import mulaw

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop", reason="audioop is the reference codec: on Python 3.13+ pip install audioop-lts")

ALL_PCM = np.arange(-32768, 32768, dtype="<i2")
ALL_CODES = bytes(range(256))


def test_encode_matches_audioop_on_every_int16() -> None:
    pcm = ALL_PCM.tobytes()
    ours = np.frombuffer(mulaw.encode(pcm), dtype=np.uint8)
    ref = np.frombuffer(audioop.lin2ulaw(pcm, 2), dtype=np.uint8)
    assert ours.shape == (65536,)
    mismatches = np.flatnonzero(ours != ref)
    assert mismatches.size == 0, f"{mismatches.size} inputs differ, first at {ALL_PCM[mismatches[:5]]}"


def test_decode_matches_audioop_on_every_code() -> None:
    ours = np.frombuffer(mulaw.decode(ALL_CODES), dtype="<i2")
    ref = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype="<i2")
    assert ours.shape == (256,)
    np.testing.assert_array_equal(ours, ref)


def test_decode_fixed_points() -> None:
    def one(code: int) -> int:
        return int(np.frombuffer(mulaw.decode(bytes([code])), dtype="<i2")[0])

    assert one(0xFF) == 0
    assert one(mulaw.SILENCE_BYTE) == 0
    assert one(0x80) == 32124
    assert one(0x00) == -32124
    assert one(0x7F) == 0  # "negative zero"


def test_code_to_lin_to_code_is_identity_except_negative_zero() -> None:
    back = mulaw.encode(mulaw.decode(ALL_CODES))
    expected = bytearray(ALL_CODES)
    expected[0x7F] = 0xFF  # -0 decodes to 0, which encodes as +0
    assert back == bytes(expected)


def test_silence_encodes_to_silence_byte() -> None:
    assert mulaw.encode(np.zeros(160, dtype="<i2").tobytes()) == bytes([mulaw.SILENCE_BYTE]) * 160


def test_array_variants_agree_with_bytes_variants() -> None:
    rng = np.random.default_rng(7)
    pcm = np.concatenate([ALL_PCM, rng.integers(-32768, 32768, 4000).astype(np.int16)])
    assert mulaw.encode_array(pcm) == mulaw.encode(pcm.astype("<i2").tobytes())

    codes = rng.integers(0, 256, 4000).astype(np.uint8).tobytes() + ALL_CODES
    arr = mulaw.decode_array(codes)
    assert arr.dtype == np.int16
    assert arr.tobytes() == mulaw.decode(codes)
    # decode_array also takes a uint8 array.
    np.testing.assert_array_equal(mulaw.decode_array(np.frombuffer(codes, dtype=np.uint8)), arr)


def test_lengths() -> None:
    assert len(mulaw.encode(b"\x00\x00" * 160)) == 160
    assert len(mulaw.decode(b"\xff" * 160)) == 320
    assert mulaw.encode(b"") == b""
    assert mulaw.decode(b"") == b""
