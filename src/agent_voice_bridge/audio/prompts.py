"""Prompts a stage plays by itself, as 8 kHz PCM16: a WAV from disk, offline speech synthesis, a beep.

Synthesis uses Debian's ``espeak-ng`` or ``flite`` command, whichever is on PATH,
once per text and process (at server start through the stage's ``warm_up``). No
network, no model download.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from functools import cache
from pathlib import Path

import numpy as np

from agent_voice_bridge.audio.resampler import PolyphaseResampler

RATE = 8000
SYNTHESIZERS = ("espeak-ng", "flite")
SYNTH_TIMEOUT_SECS = 30.0


def synthesizer() -> str | None:
    """The first offline synthesiser found on PATH (``espeak-ng``, ``flite``), or None."""
    return next((found for name in SYNTHESIZERS if (found := shutil.which(name))), None)


@cache
def load_wav(path: str) -> bytes:
    """A PCM WAV file (8/16/32-bit, any channels, any rate) as mono 16-bit PCM at 8 kHz.

    Raises ValueError saying what is wrong with the file."""
    try:
        with wave.open(path, "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise ValueError(f"{path!r} does not exist") from None
    except (OSError, EOFError, wave.Error) as exc:
        raise ValueError(f"{path!r} is not a PCM WAV file ({exc})") from None
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    elif width == 4:
        samples = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 65536.0
    else:
        raise ValueError(f"{path!r}: {8 * width}-bit samples are not supported (use 16-bit PCM)")
    mono = samples.reshape(-1, channels).mean(axis=1)
    pcm = np.clip(np.round(mono), -32768, 32767).astype("<i2").tobytes()
    if rate != RATE:
        pcm = PolyphaseResampler(rate, RATE).process(pcm)
    if not pcm:
        raise ValueError(f"{path!r} holds no audio")
    return pcm


@cache
def synthesize(text: str) -> bytes:
    """``text`` spoken by the offline synthesiser, 8 kHz PCM16. Raises RuntimeError without one."""
    program = synthesizer()
    if program is None:
        raise RuntimeError("no offline speech synthesiser: install espeak-ng or flite")
    with tempfile.TemporaryDirectory(prefix="voice-bridge-tts-") as tmp:
        out = str(Path(tmp) / "prompt.wav")
        if Path(program).name == "flite":
            argv = [program, "-t", text, "-o", out]
        else:
            argv = [program, "-v", "en-us", "-s", "165", "-w", out, text]
        subprocess.run(argv, check=True, capture_output=True, timeout=SYNTH_TIMEOUT_SECS)
        return load_wav.__wrapped__(out)  # not cached under the temporary name


def tone(freq: float = 1000.0, secs: float = 0.5, dbfs: float = -12.0, fade_secs: float = 0.01) -> bytes:
    """A sine beep with short fades (no clicks), 8 kHz PCM16."""
    n = int(secs * RATE)
    t = np.arange(n) / RATE
    wave_ = np.sin(2 * np.pi * freq * t) * 32767 * 10 ** (dbfs / 20)
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / max(fade_secs * RATE, 1))
    return np.round(wave_ * ramp).astype("<i2").tobytes()


def silence(secs: float) -> bytes:
    return bytes(2 * int(secs * RATE))


THINKING_NOTES = ((0.0, 784.0), (0.18, 659.3))
"""The built-in thinking sound: (start s, Hz) of two soft notes, G5 then E5, a falling minor third."""


@cache
def thinking_sound(dbfs: float = -24.0) -> bytes:
    """A soft two-note chime (0.8 s, 8 kHz PCM16) that says "one moment" without words.

    Synthesised here, not recorded: each note is a sine with a quieter fourth partial (a mallet's
    timbre) and a 5 ms attack into an 90 ms decay, peaking at ``dbfs``, well inside the phone band.
    Made by this project and dedicated to the public domain (CC0 1.0), like anything it generates.
    """
    n = int(0.8 * RATE)
    t = np.arange(n) / RATE
    out = np.zeros(n)
    for start, freq in THINKING_NOTES:
        local = t - start
        on = local >= 0
        envelope = np.where(on, np.minimum(local / 0.005, 1.0) * np.exp(-np.maximum(local, 0) / 0.09), 0.0)
        out += envelope * (np.sin(2 * np.pi * freq * local) + 0.2 * np.sin(2 * np.pi * 4 * freq * local))
    out *= 32767 * 10 ** (dbfs / 20) / np.max(np.abs(out))
    return np.round(out).astype("<i2").tobytes()
