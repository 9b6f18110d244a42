"""Codec path: µs per 20 ms frame, ours vs pipecat's ``TwilioFrameSerializer``.

caller → model: Twilio's 160 μ-law bytes → 16 kHz PCM16 (320 samples).
model → caller: 24 kHz PCM16 (480 samples) → 160 μ-law bytes for Twilio.

pipecat's serializer also parses/builds the Twilio JSON and base64, so ours is timed
twice: the codec alone (``mulaw.decode`` + ``PolyphaseResampler``; resampler +
``mulaw.encode``), and with our own wire step added (``parse_event`` /
``OutboundMessages.media``), which is the like-for-like figure. Input is real speech.
Each figure is the median over ``repeats`` runs of the mean over ``frames`` frames.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from bench.callers import speech_clips

SID = "MZ00000000000000000000000000000000"


def _speech_8k(frames: int) -> np.ndarray:
    audio = np.concatenate([clip for _, clip in speech_clips()])
    reps = -(-frames * 160 // len(audio))
    return np.tile(audio, reps)[: frames * 160]


def _inputs(frames: int) -> tuple[list[str], list[bytes], list[bytes]]:
    """Twilio media messages, their μ-law payloads, and 24 kHz PCM16 frames of the same speech."""
    from agent_voice_bridge.audio import mulaw
    from agent_voice_bridge.audio.resampler import PolyphaseResampler

    pcm8 = _speech_8k(frames)
    wire = mulaw.encode_array(pcm8)
    payloads = [wire[i * 160:(i + 1) * 160] for i in range(frames)]
    messages = [json.dumps({"event": "media", "sequenceNumber": str(i + 2), "streamSid": SID,
                            "media": {"track": "inbound", "chunk": str(i + 1), "timestamp": str(i * 20),
                                      "payload": base64.b64encode(p).decode("ascii")}})
                for i, p in enumerate(payloads)]
    pcm24 = PolyphaseResampler(8000, 24000).process_array(pcm8).astype("<i2").tobytes()
    frames24 = [pcm24[i * 960:(i + 1) * 960] for i in range(frames)]
    return messages, payloads, frames24


def _time(run: Callable[[], Any], frames: int, repeats: int) -> float:
    means = []
    for _ in range(repeats):
        t = time.perf_counter_ns()
        run()
        means.append((time.perf_counter_ns() - t) / frames / 1000.0)
    return round(statistics.median(means), 3)


def _ours(messages: list[str], payloads: list[bytes], frames24: list[bytes], frames: int,
          repeats: int) -> dict[str, float]:
    from agent_voice_bridge.audio import mulaw
    from agent_voice_bridge.audio.resampler import PolyphaseResampler
    from agent_voice_bridge.transports.twilio_protocol import OutboundMessages, parse_event

    up, down, out = PolyphaseResampler(8000, 16000), PolyphaseResampler(24000, 8000), OutboundMessages(SID)

    def codec_in() -> None:
        for p in payloads:
            up.process(mulaw.decode(p))

    def wire_in() -> None:
        for m in messages:
            up.process(mulaw.decode(parse_event(m).payload))

    def codec_out() -> None:
        for f in frames24:
            mulaw.encode(down.process(f))

    def wire_out() -> None:
        for f in frames24:
            out.media(mulaw.encode(down.process(f)))

    codec_in(), codec_out()  # warm the filter design and plan caches
    return {"in_codec_us": _time(codec_in, frames, repeats), "in_wire_us": _time(wire_in, frames, repeats),
            "out_codec_us": _time(codec_out, frames, repeats), "out_wire_us": _time(wire_out, frames, repeats)}


def _pipecat(messages: list[str], frames24: list[bytes], frames: int, repeats: int) -> dict[str, float]:
    from pipecat.frames.frames import OutputAudioRawFrame
    from pipecat.serializers.twilio import TwilioFrameSerializer

    async def measure() -> dict[str, float]:
        serializer = TwilioFrameSerializer(stream_sid=SID, params=TwilioFrameSerializer.InputParams(auto_hang_up=False))
        await serializer.setup(SimpleNamespace(audio_in_sample_rate=16000))  # what a 16 kHz pipeline gives it
        out_frames = [OutputAudioRawFrame(audio=f, sample_rate=24000, num_channels=1) for f in frames24]

        async def run_in() -> None:
            for m in messages:
                await serializer.deserialize(m)

        async def run_out() -> None:
            for f in out_frames:
                await serializer.serialize(f)

        async def timed(run: Callable[[], Any]) -> float:
            means = []
            for _ in range(repeats):
                t = time.perf_counter_ns()
                await run()
                means.append((time.perf_counter_ns() - t) / frames / 1000.0)
            return round(statistics.median(means), 3)

        await run_in(), await run_out()
        return {"in_us": await timed(run_in), "out_us": await timed(run_out)}

    return asyncio.run(measure())


def run_codec(frames: int = 5000, repeats: int = 5) -> dict[str, Any]:
    messages, payloads, frames24 = _inputs(frames)
    ours = _ours(messages, payloads, frames24, frames, repeats)
    theirs = _pipecat(messages, frames24, frames, repeats)
    return {
        "frames": frames,
        "repeats": repeats,
        "ours": ours,
        "pipecat": theirs,
        "ratio_in": round(ours["in_wire_us"] / theirs["in_us"], 3) if theirs["in_us"] else None,
        "ratio_out": round(ours["out_wire_us"] / theirs["out_us"], 3) if theirs["out_us"] else None,
    }
