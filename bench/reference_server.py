"""The reference: a Twilio echo line built only from pipecat's own pieces, as its docs show.

FastAPI + ``FastAPIWebsocketTransport`` + ``TwilioFrameSerializer`` (16 kHz into the
pipeline, 24 kHz out of it), Silero ``VADProcessor`` (one ``SileroVADAnalyzer``, so
one ONNX session, per call, as pipecat does it), and an immediate echo: every input
audio frame goes straight back as output audio. The echo gives 16 kHz audio, so
pipecat's output transport resamples it to its 24 kHz output rate and the serializer
then to Twilio's 8 kHz μ-law, exactly as it would treat a model's voice.

``auto_hang_up=False``: no Twilio credentials, no REST calls. Nothing here is ours
except the echo (a dozen lines) and the ``/healthz`` route the harness polls.

``--line turns`` (the turn-taking benchmark, ``bench/turns.py``): instead of the echo, pipecat's default
turn-taking, ``VADProcessor(SileroVADAnalyzer())`` then ``UserTurnProcessor()`` (its default strategies:
the VAD's start begins the turn and interrupts; Smart Turn v3 with the VAD's silence ends it, not
waiting for a transcript, as ``realtime_service_mode`` sets it for an audio-in model), and
``bench.known_reply.KnownReply`` answering each turn's end with a known reply.

Run: ``python -m bench.reference_server --port 8090`` (from the repository root).
"""

from __future__ import annotations

import argparse
import sys

from fastapi import FastAPI, WebSocket
from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

IN_RATE = 16000
OUT_RATE = 24000


class ImmediateEcho(FrameProcessor):
    """Every ``InputAudioRawFrame`` comes back at once as an ``OutputAudioRawFrame``."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            frame = OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate,
                                        num_channels=frame.num_channels)
        await self.push_frame(frame, direction)


def build_reference(websocket: object, stream_sid: str, call_sid: str,
                    line: str = "echo") -> tuple[FastAPIWebsocketTransport, PipelineWorker]:
    """One call's transport and worker, the way pipecat's Twilio examples put them together."""
    serializer = TwilioFrameSerializer(
        stream_sid=stream_sid,
        call_sid=call_sid,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,  # type: ignore[arg-type]
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )
    if line == "turns":
        from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
        from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy
        from pipecat.turns.user_turn_processor import UserTurnProcessor
        from pipecat.turns.user_turn_strategies import UserTurnStrategies

        from bench.known_reply import KnownReply

        # The default stop strategy as pipecat's realtime_service_mode sets it: an audio-in model has no
        # transcript to wait for (with one, the turn would only end at the 5 s user_turn_stop_timeout).
        stop = TurnAnalyzerUserTurnStopStrategy(turn_analyzer=LocalSmartTurnAnalyzerV3(), wait_for_transcript=False)
        turns = UserTurnProcessor(user_turn_strategies=UserTurnStrategies(stop=[stop]))
        middle = [VADProcessor(vad_analyzer=SileroVADAnalyzer()), turns, KnownReply(sample_rate=IN_RATE)]
    else:
        middle = [VADProcessor(vad_analyzer=SileroVADAnalyzer()), ImmediateEcho()]
    pipeline = Pipeline([transport.input(), *middle, transport.output()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=IN_RATE, audio_out_sample_rate=OUT_RATE),
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
    )
    return transport, worker


def create_app(line: str = "echo") -> FastAPI:
    app = FastAPI()
    live = {"calls": 0, "finished": 0}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "live_calls": live["calls"], "finished_calls": live["finished"]}

    @app.websocket("/media-stream")
    async def media_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        transport_type, call_data = await parse_telephony_websocket(websocket)
        if transport_type != "twilio":
            await websocket.close(code=1008)
            return
        transport, worker = build_reference(websocket, call_data["stream_id"], call_data["call_id"], line)

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(_transport, _client):
            await worker.cancel()

        live["calls"] += 1
        try:
            runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
            await runner.add_workers(worker)
            await runner.run()
        finally:
            live["calls"] -= 1
            live["finished"] += 1

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="pipecat's own Twilio echo line (benchmark reference)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--line", choices=("echo", "turns"), default="echo",
                        help="echo: the load benchmark's echo; turns: default turn-taking and a known reply")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    if args.line == "turns":
        from bench.known_reply import KnownReply

        KnownReply(sample_rate=IN_RATE)  # synthesise the replies before the first call
    uvicorn.run(create_app(args.line), host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
