"""A labelled corpus of phone-line turn-taking scenes, generated in code (issue 19). Nothing is downloaded.

Speech comes from what is installed: the caller is Debian's Asterisk prompts (one human voice, 8 kHz),
the babble mixes those prompts with espeak-ng voices, backchannels ("uh-huh", "yeah", "okay", "mm-hmm")
are espeak-ng words and short words cut from the prompts, trimmed to 250–380 ms of sound. Noise is made
here: steady (brown "car", pink "street", low-passed "fan"), transients (cough-, door-, keyboard- and
bark-like bursts). Everything the caller sends goes through :class:`PhoneLine`: its noise track, the echo
of what the caller's phone actually played (6–20 dB down, 30–250 ms late, speakerphone or headset
filtering), then the PSTN band (300–3400 Hz), and the simulated caller's μ-law at 8 kHz. The echo is of
what was *played*, so a ``clear`` stops it as it would on a real phone.

A :class:`Scene` is one call: its line, and a script of steps (the simulated caller's) with what each
utterance is (``question``, ``paused``, ``backchannel``, ``barge``). Scenes are seeded: the same seed
gives the same corpus.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal

RATE = 8000
FRAME = 160
SOUNDS = Path("/usr/share/asterisk/sounds/en")
SPEECH_DBFS = -20.0
"""Active-speech level of the caller and of the AI's replies on the line (about nominal telephone level)."""
NOISE_SECONDS = 90.0

QUESTIONS = ("all-circuits-busy-now", "one-moment-please", "please-try-call-later", "pls-hold-while-try",
             "check-number-dial-again", "if-correct-press", "info-about-last-call", "privacy-prompt")
BARGE_INS = ("im-sorry", "hello-world", "vm-goodbye", "please-try-again", "sorry-youre-having-problems",
             "cannot-complete-as-dialed", "number-not-answering", "vm-reachoper")
BABBLE = ("tt-monkeys", "tt-weasels", "vm-instructions", "demo-congrats", "conf-adminmenu", "vm-options",
          "basic-pbx-ivr-main", "dir-intro")
ESPEAK_BABBLE = ("I told him we would be there by six but the traffic was terrible all the way.",
                 "Can you pass me the salt and the pepper, the red one over there?",
                 "They said the meeting moved to Thursday, so I have to call everyone again.")
ESPEAK_VOICES = ("en-us+m3", "en+f3", "en-gb+m1", "en-us+f2", "en+m7")
BACKCHANNEL_WORDS = ("uh-huh", "yeah", "okay", "mm-hmm", "right")
PROMPT_WORDS = ("digits/oh", "vm-no", "is", "with", "your")


# --------------------------------------------------------------------------- speech sources


def have_sounds() -> bool:
    return (SOUNDS / "hello-world.wav").exists()


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"{path}: need 16-bit PCM")
    x = np.frombuffer(raw, "<i2").astype(np.float64).reshape(-1, channels).mean(axis=1)
    if rate != RATE:
        g = np.gcd(rate, RATE)
        x = signal.resample_poly(x, RATE // g, rate // g)
    return x


@cache
def prompt(name: str) -> np.ndarray:
    """An Asterisk prompt (``name`` without ``.wav``, may include a folder) as float samples at 8 kHz."""
    return _read_wav(SOUNDS / f"{name}.wav")


@cache
def espeak(text: str, voice: str = "en-us", speed: int = 165) -> np.ndarray:
    """``text`` spoken by espeak-ng (offline), float samples at 8 kHz."""
    if not have_espeak():
        raise RuntimeError("bench turns needs espeak-ng (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory(prefix="turn-corpus-") as tmp:
        out = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True,
                       capture_output=True, timeout=30)
        return _read_wav(out)


def frame_dbfs(x: np.ndarray) -> np.ndarray:
    n = len(x) // FRAME
    frames = x[: n * FRAME].reshape(n, FRAME)
    return 10 * np.log10(np.mean(frames ** 2, axis=1) / 32768.0 ** 2 + 1e-12)


def active_level(x: np.ndarray) -> float:
    """dBFS of the frames within 25 dB of the loudest (a crude active-speech level)."""
    db = frame_dbfs(x)
    loud = db[db > db.max() - 25]
    return float(10 * np.log10(np.mean(10 ** (loud / 10))))


def at_level(x: np.ndarray, dbfs: float) -> np.ndarray:
    return x * 10 ** ((dbfs - active_level(x)) / 20)


def trim(x: np.ndarray, below_db: float = -45.0) -> np.ndarray:
    """Cut leading and trailing frames quieter than ``below_db``."""
    loud = np.where(frame_dbfs(x) > below_db)[0]
    return x[loud[0] * FRAME:(loud[-1] + 1) * FRAME] if len(loud) else x


def sound_seconds(x: np.ndarray) -> float:
    """How long ``x`` is above the simulated caller's -40 dBFS speech threshold, first to last frame."""
    loud = np.where(frame_dbfs(x) > -40.0)[0]
    return 0.0 if not len(loud) else (loud[-1] - loud[0] + 1) * FRAME / RATE


def cut_word(x: np.ndarray, secs: float) -> np.ndarray:
    """The first ``secs`` of the sound in ``x`` (leading quiet trimmed), with 10 ms in and 30 ms out fades."""
    x = trim(np.asarray(x, np.float64))[:int(secs * RATE)].copy()
    fade = int(0.03 * RATE)
    x[-fade:] *= np.linspace(1, 0, fade)
    x[:fade // 3] *= np.linspace(0, 1, fade // 3)
    return x


def backchannels() -> list[tuple[str, np.ndarray]]:
    """Short acknowledgements, each 250–380 ms of sound (faded ends), at the caller's level."""
    sources = [(f"{w}/{v}", espeak(w, v, 190)) for w, v in zip(BACKCHANNEL_WORDS, ESPEAK_VOICES)] if have_espeak() else []
    sources += [(w, prompt(w)) for w in PROMPT_WORDS]
    rng = random.Random(19)
    return [(name, at_level(cut_word(x, rng.uniform(0.25, 0.38)), SPEECH_DBFS)) for name, x in sources]


def paused_utterance(rng: random.Random) -> tuple[np.ndarray, list[float]]:
    """"<number> … five five five … one two three": real words with 0.35–0.9 s pauses mid-sentence.

    Returns the audio and the pauses (s). The words within a group are 40 ms apart.
    """
    def group(names: list[str]) -> np.ndarray:
        gap = np.zeros(int(0.04 * RATE))
        return np.concatenate([np.concatenate((trim(prompt(n)), gap)) for n in names])

    lead = rng.choice(("telephone-number", "vm-enter-num-to-call", "to-call-this-number"))
    digits = [f"digits/{rng.randrange(10)}" for _ in range(7)]
    groups = [group([lead]), group(digits[:3]), group(digits[3:])]
    pauses = [rng.uniform(0.35, 0.9) for _ in groups[1:]]
    parts: list[np.ndarray] = [groups[0]]
    for pause, g in zip(pauses, groups[1:]):
        parts += [np.zeros(int(pause * RATE)), g]
    return at_level(np.concatenate(parts), SPEECH_DBFS), pauses


# --------------------------------------------------------------------------- noise


def _norm(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = np.sqrt(np.mean(x ** 2)) + 1e-12
    return x / rms * 32768.0 * 10 ** (dbfs / 20)


def babble(rng: random.Random, dbfs: float, talkers: int = 6) -> np.ndarray:
    """Several talkers at once (prompts and espeak voices), each with its own pauses: a room or a TV."""
    n = int(NOISE_SECONDS * RATE)
    total = np.zeros(n)
    sources = [prompt(p) for p in BABBLE]
    if have_espeak():
        sources += [espeak(t, v) for t, v in zip(ESPEAK_BABBLE, ESPEAK_VOICES[1:])]
    for _ in range(talkers):
        track, pos = np.zeros(n), int(rng.uniform(0, 1.0) * RATE)
        gain = 10 ** (rng.uniform(-4, 2) / 20)
        while pos < n:
            clip = at_level(trim(rng.choice(sources)), -20) * gain
            end = min(n, pos + len(clip))
            track[pos:end] += clip[:end - pos]
            pos = end + int(rng.uniform(0.1, 0.6) * RATE)
        total += track
    return _norm(total, dbfs)


def steady(rng: random.Random, kind: str, dbfs: float) -> np.ndarray:
    """``car`` (brown noise with a low hum), ``fan`` (low-passed white, a 120 Hz whir) or ``street`` (pink)."""
    n = int(NOISE_SECONDS * RATE)
    white = np.random.default_rng(rng.randrange(2 ** 32)).standard_normal(n)
    t = np.arange(n) / RATE
    if kind == "car":
        x = np.cumsum(white)
        x = signal.sosfilt(signal.butter(1, 40, "highpass", fs=RATE, output="sos"), x)
        x = _norm(x, 0) + _norm(np.sin(2 * np.pi * 95 * t), -12)
    elif kind == "fan":
        x = signal.sosfilt(signal.butter(2, 900, "lowpass", fs=RATE, output="sos"), white)
        x = _norm(x, 0) + _norm(np.sin(2 * np.pi * 120 * t) * (1 + 0.2 * np.sin(2 * np.pi * 0.5 * t)), -10)
    else:  # pink: 1/f by Voss-McCartney-like filtering (Paul Kellet's economy filter)
        b, a = [0.049922035, -0.095993537, 0.050612699, -0.004408786], [1, -2.494956002, 2.017265875, -0.522189400]
        x = signal.lfilter(b, a, white)
    return _norm(x, dbfs)


def _burst(rng: random.Random, kind: str) -> np.ndarray:
    g = np.random.default_rng(rng.randrange(2 ** 32))
    if kind == "cough":  # a noisy, formant-shaped burst with a sharp attack, 150–300 ms
        n = int(rng.uniform(0.15, 0.3) * RATE)
        env = np.exp(-np.arange(n) / (0.07 * RATE)) * (1 - np.exp(-np.arange(n) / (0.005 * RATE)))
        x = signal.sosfilt(signal.butter(2, [300, 1800], "bandpass", fs=RATE, output="sos"), g.standard_normal(n))
        return x * env
    if kind == "door":  # a low thud and a click
        n = int(0.25 * RATE)
        t = np.arange(n) / RATE
        thud = np.sin(2 * np.pi * 70 * t) * np.exp(-t / 0.05)
        click = np.zeros(n)
        click[:40] = g.standard_normal(40) * np.exp(-np.arange(40) / 8)
        return thud + click
    if kind == "keyboard":  # 4–8 key clicks 80–200 ms apart
        keys = rng.randrange(4, 9)
        x = np.zeros(int(keys * 0.2 * RATE) + 100)
        pos = 0
        for _ in range(keys):
            click = signal.sosfilt(signal.butter(2, 2000, "highpass", fs=RATE, output="sos"), g.standard_normal(60))
            x[pos:pos + 60] += click * np.exp(-np.arange(60) / 10)
            pos += int(rng.uniform(0.08, 0.2) * RATE)
        return x
    # bark: a harmonic burst with a falling pitch, 150–250 ms, twice
    parts = []
    for _ in range(2):
        n = int(rng.uniform(0.15, 0.25) * RATE)
        t = np.arange(n) / RATE
        f0 = np.linspace(rng.uniform(450, 650), 300, n)
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        tone = sum(np.sin(k * phase) / k for k in range(1, 6))
        parts += [tone * np.sqrt(np.abs(np.sin(np.pi * t / t[-1]))), np.zeros(int(0.12 * RATE))]
    return np.concatenate(parts)


def transients(rng: random.Random, dbfs: float, floor_dbfs: float = -60.0) -> np.ndarray:
    """Coughs, doors, keyboards and barks every 1–3 s (peak frames around ``dbfs``) over a faint floor."""
    n = int(NOISE_SECONDS * RATE)
    x = steady(rng, "street", floor_dbfs)
    pos = int(rng.uniform(0.3, 1.0) * RATE)
    while pos < n:
        burst = _burst(rng, rng.choice(("cough", "door", "keyboard", "bark")))
        burst = burst / (np.max(np.abs(burst)) + 1e-12) * 32768 * 10 ** ((dbfs + rng.uniform(-4, 4)) / 20)
        end = min(n, pos + len(burst))
        x[pos:end] += burst[:end - pos]
        pos = end + int(rng.uniform(1.0, 3.0) * RATE)
    return x


# --------------------------------------------------------------------------- the line


_BAND = signal.butter(4, [300, 3400], "bandpass", fs=RATE, output="sos")
_SPEAKERPHONE = signal.butter(2, [450, 2800], "bandpass", fs=RATE, output="sos")
_HEADSET = signal.butter(2, 2200, "lowpass", fs=RATE, output="sos")


class PhoneLine:
    """A :class:`~agent_voice_bridge.transports.simulated_caller.LineModel`: noise + echo, then the PSTN band.

    ``echo_db``: how far below what the phone played its echo reaches the caller's microphone (None: no
    echo); ``echo_delay_ms`` (≥ 20: the echo of a frame can only reach a later frame); ``echo_filter``:
    ``speakerphone`` (450–2800 Hz, a little saturation) or ``headset`` (low-passed at 2.2 kHz).
    ``noise``: a track added under everything, looped.
    """

    def __init__(self, *, echo_db: float | None = None, echo_delay_ms: float = 120.0,
                 echo_filter: str = "speakerphone", noise: np.ndarray | None = None):
        if echo_db is not None and echo_delay_ms < 20:
            raise ValueError("echo_delay_ms must be at least 20 (one frame)")
        self.echo_gain = None if echo_db is None else 10 ** (-echo_db / 20)
        self.delay = int(round(echo_delay_ms * RATE / 1000))
        self.echo_sos = _SPEAKERPHONE if echo_filter == "speakerphone" else _HEADSET
        self.saturate = echo_filter == "speakerphone"
        self.noise = noise
        self._played = np.zeros(0)
        self._sent = 0
        self._band_zi = signal.sosfilt_zi(_BAND) * 0.0
        self._echo_zi = signal.sosfilt_zi(self.echo_sos) * 0.0

    def played(self, pcm: np.ndarray) -> None:
        if self.echo_gain is not None:
            self._played = np.concatenate((self._played, pcm.astype(np.float64)))

    def outgoing(self, pcm: np.ndarray) -> np.ndarray:
        n = len(pcm)
        x = pcm.astype(np.float64)
        if self.noise is not None:
            idx = (self._sent + np.arange(n)) % len(self.noise)
            x = x + self.noise[idx]
        if self.echo_gain is not None:
            src = self._sent - self.delay + np.arange(n)
            ok = (src >= 0) & (src < len(self._played))
            e = np.zeros(n)
            e[ok] = self._played[src[ok]]
            e, self._echo_zi = signal.sosfilt(self.echo_sos, e, zi=self._echo_zi)
            if self.saturate:
                e = 20000.0 * np.tanh(e / 20000.0)
            x = x + e * self.echo_gain
        self._sent += n
        y, self._band_zi = signal.sosfilt(_BAND, x, zi=self._band_zi)
        return np.clip(np.round(y), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- scenes


@dataclass
class Scene:
    """One call: a line condition and a script. ``labels[i]`` says what utterance ``i`` of the call is."""

    name: str
    condition: str
    kind: str  # listen | backchannel | barge | pauses
    line: dict[str, Any]
    steps: list[Any] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def make_line(self) -> PhoneLine:
        spec = dict(self.line)
        noise = spec.pop("noise", None)
        seed = spec.pop("seed", 0)
        return PhoneLine(noise=None if noise is None else noise_track(*noise, seed), **spec)


@cache
def noise_track(kind: str, dbfs: float, seed: int) -> np.ndarray:
    """``NOISE_SECONDS`` of one kind of noise (``babble``, ``transient``, ``car``, ``fan``, ``street``)."""
    rng = random.Random(seed)
    if kind == "babble":
        return babble(rng, dbfs)
    return transients(rng, dbfs) if kind == "transient" else steady(rng, kind, dbfs)


ECHOES = [(6, 30, "speakerphone"), (10, 120, "speakerphone"), (10, 250, "headset"), (15, 80, "speakerphone"),
          (20, 180, "headset"), (10, 60, "headset"), (15, 200, "speakerphone"), (20, 40, "speakerphone")]
NOISES = [("babble", -35.0), ("babble", -30.0), ("car", -38.0), ("fan", -40.0), ("street", -36.0),
          ("transient", -18.0)]


def conditions(rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """Every line condition: clean, each echo, each noise; the noise ones are also seeded per scene."""
    out: list[tuple[str, dict[str, Any]]] = [("clean", {})]
    for db, delay, filt in ECHOES:
        out.append((f"echo-{db}dB", {"echo_db": float(db), "echo_delay_ms": float(delay), "echo_filter": filt}))
    for kind, dbfs in NOISES:
        out.append((f"{kind}{'' if kind != 'babble' else f'{dbfs:.0f}'}", {"noise": (kind, dbfs),
                                                                             "seed": rng.randrange(2 ** 31)}))
    return out


def pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def _caller(rng: random.Random, names: tuple[str, ...]) -> np.ndarray:
    """A prompt at the caller's level, which varies from call to call (-4 to +2 dB)."""
    return pcm16(at_level(prompt(rng.choice(names)), SPEECH_DBFS + rng.uniform(-4, 2)))


def scenes(seed: int = 19, *, repeats: int = 1) -> list[Scene]:
    """The corpus: per condition one listening scene (the caller silent through a reply), one with two
    backchannels, one with a barge-in, one with a paused utterance; ``repeats`` times, reseeded."""
    from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard

    rng = random.Random(seed)
    bcs = backchannels()
    out: list[Scene] = []
    for r in range(repeats):
        for cond, line in conditions(rng):
            line = dict(line)
            if "seed" in line:
                line["seed"] = line["seed"] + r
            q = _caller(rng, QUESTIONS)
            # the caller asks, then listens through the whole reply
            out.append(Scene(f"{cond}/listen/{r}", cond, "listen", line,
                             [Pause(0.6), Say(q, "question"), WaitHeard(after=9.0, timeout=6.0)], ["question"]))
            # two backchannels over the reply
            (n1, b1), (n2, b2) = rng.sample(bcs, 2)
            out.append(Scene(f"{cond}/backchannel/{r}", cond, "backchannel", line,
                             [Pause(0.6), Say(_caller(rng, QUESTIONS), "question"),
                              WaitHeard(after=rng.uniform(0.8, 1.6), timeout=6.0), Say(pcm16(b1), f"backchannel {n1}"),
                              Pause(rng.uniform(1.2, 2.0)), Say(pcm16(b2), f"backchannel {n2}"), Pause(2.5)],
                             ["question", "backchannel", "backchannel"]))
            # a true barge-in over the reply
            out.append(Scene(f"{cond}/barge/{r}", cond, "barge", line,
                             [Pause(0.6), Say(_caller(rng, QUESTIONS), "question"),
                              WaitHeard(after=rng.uniform(0.6, 2.5), timeout=6.0),
                              Say(_caller(rng, BARGE_INS), "barge-in"), Pause(2.0)],
                             ["question", "barge"]))
            # an utterance with pauses mid-sentence
            audio, _ = paused_utterance(rng)
            out.append(Scene(f"{cond}/pauses/{r}", cond, "pauses", line,
                             [Pause(0.6), Say(pcm16(audio * 10 ** (rng.uniform(-4, 2) / 20)), "paused"),
                              WaitHeard(after=0.4, timeout=6.0)], ["paused"]))
    return out
