"""``vad.interrupter``: Silero VAD that stops the agent when the caller talks over it.

It pushes what pipecat's ``VADProcessor`` pushes (``VADUserStarted/StoppedSpeakingFrame``,
``UserSpeakingFrame``, ``SpeechControlParamsFrame``) from pipecat's four-state rule
(QUIET → STARTING → SPEAKING → STOPPING, ``confidence``/``start_secs``/``stop_secs``/
``min_volume``), and adds the barge-in rule: speech that starts while the agent's audio
is still playing to the caller (between the output's ``BotStartedSpeakingFrame`` and
``BotStoppedSpeakingFrame``, which follow Twilio's mark echoes, not our send times)
broadcasts an interruption. Every stage then drops what it holds for the old turn and
``twilio.output`` sends ``clear``.

Why not pipecat's ``VADProcessor`` any more: at 40 calls it was the server's biggest CPU
cost. Its per-frame controller and queue hops cost more than the audio work of the cheap
stages around it, its loudness is a BS.1770 measurement over the last 400 ms computed
again for every 32 ms window, and each call ran its own Silero inference. Here audio takes
the :class:`AudioStage` fast path, the windows of all calls are scored in one batched
inference (:mod:`agent_voice_bridge.audio.silero_batch`), and the volume is the window's
own RMS level, with no smoothing: pipecat's rolling, smoothed loudness rises ~60 ms after
speech that follows digital silence, and that lag was added to every barge-in.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from functools import partial

import numpy as np
from pipecat.audio.vad.vad_analyzer import VADParams, VADState
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    SpeechControlParamsFrame,
    StartFrame,
    UserSpeakingFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADParamsUpdateFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pydantic import Field

from agent_voice_bridge.audio.echo_gate import EchoGate
from agent_voice_bridge.audio.silero_batch import WINDOW, SileroBatcher, SileroStream, shared_session
from agent_voice_bridge.pipelines.formats import AudioFormat, Side, require
from agent_voice_bridge.pipelines.stage import StageContext, StageParams
from agent_voice_bridge.processors.audio_stage import AudioStage
from agent_voice_bridge.transports.playback import PlaybackTracker

QUIET, STARTING, SPEAKING, STOPPING = VADState.QUIET, VADState.STARTING, VADState.SPEAKING, VADState.STOPPING
SPEECH_ACTIVITY_SECS = 1.0
"""``UserSpeakingFrame`` spacing while the caller talks (keeps turn/idle watchers fed; nothing here reads it)."""
_START, _STOP, _ACTIVITY = "start", "stop", "activity"
LEARN_WINDOWS = 16
"""Windows (~0.5 s) the echo gate learns from at a time while the agent plays."""
CALLER_SHARE = 0.6
"""Over an echo, the share of a run's 16 ms halves that must be louder than the echo for it to be the caller."""
_FLOAT_SCALE = np.float32(1 / 32768)


def window_energy(window: np.ndarray) -> float:
    """Mean square of float samples in [-1, 1)."""
    return float(np.dot(window, window)) / len(window)


def energy_volume(energy: float) -> float:
    """A mean square as pipecat's volume: dBFS mapped from [-110, -10] to [0, 1]."""
    return 0.0 if energy <= 0.0 else min(1.0, max(0.0, (10.0 * math.log10(energy) + 110.0) / 100.0))


def window_volume(window: np.ndarray) -> float:
    """RMS level of float samples in [-1, 1), dBFS mapped from [-110, -10] to [0, 1] like pipecat's volume."""
    return energy_volume(window_energy(window))


class VADInterrupterParams(StageParams):
    confidence: float = Field(default=0.7, gt=0, lt=1, description="Silero speech probability threshold.")
    start_secs: float = Field(default=0.2, ge=0.03, le=2, description="Speech needed before the caller counts as talking.")
    stop_secs: float = Field(default=0.6, ge=0.05, le=5, description="Silence that ends the caller's turn.")
    min_volume: float = Field(default=0.3, ge=0, le=1,
                              description="Quieter windows are never speech: 0.3 is -80 dBFS, i.e. not digital silence.")
    backchannel_secs: float = Field(
        default=0.5, ge=0, le=2,
        description="While the agent is audible, speech must last this long to interrupt it (and to start the "
                    "caller's turn): a shorter 'uh-huh' or cough does neither. 0: start_secs, as for any turn.")
    echo_gate: bool = Field(
        default=True,
        description="Speech that follows what the caller's phone just played (known from Twilio's mark echoes), "
                    "a little later and quieter, is its echo: a speakerphone's leak does not interrupt the agent.")
    echo_margin_db: float = Field(
        default=3.0, ge=0, le=30,
        description="A run that follows the agent's played audio is echo unless it is at most this many dB below it.")


class VADInterrupter(AudioStage):
    """Pushes the VAD frames and ``UserStarted/StoppedSpeakingFrame`` both ways, and an ``InterruptionFrame`` on barge-in.

    Audio passes through unchanged and undelayed. A window's score arrives in a synchronous
    callback once the batch it joined has run: at once when this is the process's only call,
    else within a few ms. The frames it causes are queued and pushed in order, right behind
    the audio frame that completed the window when the score was already there (as pipecat's
    ``VADProcessor`` does), else by this stage's emitter task as soon as the loop lets it.
    """

    Params = VADInterrupterParams
    detects_speech = True

    def __init__(self, *, sample_rate: int = 16000, confidence: float = 0.7, start_secs: float = 0.2,
                 stop_secs: float = 0.6, min_volume: float = 0.3, backchannel_secs: float = 0.5,
                 echo_gate: bool = True, echo_margin_db: float = 3.0, playback: PlaybackTracker | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if sample_rate not in WINDOW:
            raise ValueError(f"vad.interrupter needs 8000 or 16000 Hz audio, not {sample_rate}")
        self._rate = sample_rate
        self._window = WINDOW[sample_rate]
        self._pending = bytearray()  # PCM16 not yet in a window: appended to in place, never re-concatenated
        self._stream: SileroStream | None = None
        self._events: deque[tuple[str, float, float]] = deque()  # (kind, time of the deciding window, speech secs)
        self._events_queued = asyncio.Event()
        self._emitting = asyncio.Lock()  # one pusher at a time, so the frames keep their order
        self._emitter: asyncio.Task | None = None
        self._agent_audible = False
        self._state, self._speaking = QUIET, False
        self._starting = self._stopping = self._since_activity = 0
        self._backchannel_secs = backchannel_secs
        self._backchannel_windows = round(backchannel_secs * sample_rate / self._window)
        self._echo_gate = (EchoGate(playback.played, margin_db=echo_margin_db)
                           if echo_gate and playback is not None else None)
        self._halves: deque[float] = deque(maxlen=128)  # energies of the last windows' halves (16 ms each)
        self._since_learning = 0
        self._set_params(VADParams(confidence=confidence, start_secs=start_secs, stop_secs=stop_secs,
                                   min_volume=min_volume))

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        return require(audio_in, encoding="pcm16", rates=(8000, 16000))

    @classmethod
    def warm_up(cls, params: StageParams) -> None:
        shared_session()  # ~20 ms and ~10 MB once per process, before any call streams

    @classmethod
    def create(cls, params: VADInterrupterParams, ctx: StageContext) -> VADInterrupter:
        assert ctx.audio_in is not None
        playback = ctx.call.playback if ctx.call is not None else None
        return cls(sample_rate=ctx.audio_in.rate, playback=playback, **params.model_dump())

    @property
    def params(self) -> VADParams:
        return self._params

    def audio(self, frame: Frame) -> Frame:
        if isinstance(frame, InputAudioRawFrame) and frame.sample_rate == self._rate and self._stream is not None:
            self._feed(frame.audio)
        return frame

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, BotStartedSpeakingFrame):
            self._agent_audible = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._agent_audible = False
        elif isinstance(frame, EndFrame):
            await self._stop(drain=True)  # the last windows' frames go out before the EndFrame
        elif isinstance(frame, CancelFrame):
            await self._stop(drain=False)
        # An InterruptionFrame passes on: the caller's audio, and so the VAD's state, is continuous.
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._stream = SileroStream(self._rate, SileroBatcher.current())
            self._emitter = self.create_task(self._emitter_task(), f"{self}::emitter")
            await self.broadcast_frame(SpeechControlParamsFrame, vad_params=self._params)
        elif isinstance(frame, VADParamsUpdateFrame):
            self._set_params(frame.params)
            await self.broadcast_frame(SpeechControlParamsFrame, vad_params=frame.params)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        await super().push_frame(frame, direction)
        if self._events and isinstance(frame, InputAudioRawFrame) and not self._emitting.locked():
            await self._emit_events()

    async def cleanup(self):
        await self._stop(drain=False)
        await super().cleanup()

    def _set_params(self, params: VADParams) -> None:
        """New thresholds apply from the next window; unlike pipecat, the caller's state is kept, not reset."""
        window_secs = self._window / self._rate
        self._params = params
        self._start_windows = round(params.start_secs / window_secs)
        self._stop_windows = round(params.stop_secs / window_secs)
        self._activity_windows = round(SPEECH_ACTIVITY_SECS / window_secs)

    def _feed(self, audio: bytes) -> None:
        """Append one frame's samples; submit every window they complete."""
        pending = self._pending
        pending += audio
        while len(pending) >= 2 * self._window:
            window = np.frombuffer(pending, np.int16, self._window) * _FLOAT_SCALE
            del pending[:2 * self._window]
            half = self._window // 2
            first, second = window_energy(window[:half]), window_energy(window[half:])
            scored = partial(self._on_window, energy_volume((first + second) / 2), time.time(),
                             (first, second, time.monotonic()))
            self._stream.submit(window, scored)

    def _on_window(self, volume: float, at: float, halves: tuple[float, float, float], confidence: float) -> None:
        """pipecat's ``VADAnalyzer._run_analyzer`` rule for one window; events are queued with the window's time.

        Two additions: over the agent's audio a run must last ``backchannel_secs`` to start a turn, and a
        run the echo gate finds to be the agent's own echo does not start one (it stays STARTING, and is
        asked again with the next window).
        """
        self._halves.extend(halves[:2])
        speaking = confidence >= self._params.confidence and volume >= self._params.min_volume
        state = self._state
        if speaking:
            if state is QUIET:
                state, self._starting = STARTING, 1
            elif state is STARTING:
                self._starting += 1
            elif state is STOPPING:
                state, self._stopping = SPEAKING, 0
        elif state is STARTING:
            state, self._starting = QUIET, 0
        elif state is SPEAKING:
            state, self._stopping = STOPPING, 1
        elif state is STOPPING:
            self._stopping += 1
        start_windows = self._start_windows
        if self._agent_audible and self._backchannel_windows > start_windows:
            start_windows = self._backchannel_windows  # over the agent, only sustained speech counts
        if state is STARTING and self._starting >= start_windows and self._is_caller(start_windows, halves[2]):
            state, self._starting = SPEAKING, 0
        if state is STOPPING and self._stopping >= self._stop_windows:
            state, self._stopping = QUIET, 0
        self._state = state
        self._stream.may_reset = state is QUIET
        if self._agent_audible and state is not SPEAKING and self._echo_gate is not None:
            self._learn_echo(halves[2])

        if state is SPEAKING and not self._speaking:
            self._speaking, self._since_activity = True, 0
            backchannel = start_windows != self._start_windows
            self._queue_event(_START, at, self._backchannel_secs if backchannel else self._params.start_secs)
        elif state is QUIET and self._speaking:
            self._speaking = False
            self._queue_event(_STOP, at)
        if self._speaking:
            if self._since_activity % self._activity_windows == 0:
                self._queue_event(_ACTIVITY, at)
            self._since_activity += 1

    def _learn_echo(self, until: float) -> None:
        """Let the echo gate learn the line's echo while the agent plays, so it knows it before the caller
        says anything short over it: every 2nd window until the echo is known, then every 8th (~70 µs each)."""
        self._since_learning += 1
        if self._since_learning >= (8 if self._echo_gate.knows_echo else 2) and len(self._halves) >= 2 * LEARN_WINDOWS:
            self._since_learning = 0
            self._echo_gate.observe(np.fromiter(self._halves, float)[-2 * LEARN_WINDOWS:], until)

    def _is_caller(self, windows: int, until: float) -> bool:
        """Whether the last ``windows`` windows are the caller, not the echo of the agent (most of their halves)."""
        if self._echo_gate is None:
            return True
        run = np.fromiter(self._halves, float)[-2 * windows:]
        return self._echo_gate.caller_blocks(run, until) >= CALLER_SHARE * len(run)

    def _queue_event(self, kind: str, at: float, speech_secs: float = 0.0) -> None:
        self._events.append((kind, at, speech_secs))
        self._events_queued.set()

    async def _emitter_task(self) -> None:
        while True:
            await self._events_queued.wait()
            self._events_queued.clear()
            await self._emit_events()

    async def _emit_events(self) -> None:
        async with self._emitting:
            while self._events:
                await self._emit(*self._events.popleft())

    async def _emit(self, kind: str, at: float, speech_secs: float) -> None:
        # ``timestamp`` is when the deciding window's audio arrived, so ``timestamp - start_secs`` (what
        # twilio.output reads as the caller's onset) does not include the wait for the batch.
        if kind is _START:
            # start_secs: the speech this start needed (backchannel_secs over the agent), so the onset is right
            await self.broadcast_frame(VADUserStartedSpeakingFrame, start_secs=speech_secs, timestamp=at)
            # The chain has no turn aggregator, so the VAD's start is the caller's turn start
            # (services that do their own turn handling, e.g. Gemini's activityStart, listen for it).
            await self.broadcast_frame(UserStartedSpeakingFrame)
            if self._agent_audible:
                self._agent_audible = False
                await self.broadcast_interruption()
        elif kind is _STOP:
            await self.broadcast_frame(VADUserStoppedSpeakingFrame, stop_secs=self._params.stop_secs, timestamp=at)
            await self.broadcast_frame(UserStoppedSpeakingFrame)
        else:
            await self.broadcast_frame(UserSpeakingFrame)

    async def _stop(self, *, drain: bool) -> None:
        """Leave the batcher and end the emitter; ``drain``: score what is waiting and push its frames first."""
        if self._stream is not None:
            if drain:
                self._stream.flush()
            self._stream.close()
            self._stream = None
        if drain:
            await self._emit_events()
        self._events.clear()
        if self._emitter is not None:
            await self.cancel_task(self._emitter)
            self._emitter = None

