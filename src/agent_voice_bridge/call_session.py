"""Run one call: read Twilio's ``start``, build the chain's pipeline, run it to the end.

Everything a call owns (its pipeline, worker, tasks) lives and dies here, so an
error in one call is logged and closes that call's socket only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from loguru import logger
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner
from starlette.websockets import WebSocket

from agent_voice_bridge.pipelines.builder import build_pipeline
from agent_voice_bridge.pipelines.chain import Chain
from agent_voice_bridge.security import CallGate
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.twilio_protocol import ProtocolError
from agent_voice_bridge.transports.twilio_stream import StreamClosed, TwilioMediaStream

START_TIMEOUT_SECS = 10.0
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011


@dataclass
class CallRegistry:
    """Live calls in this process, for /healthz and for tests that check nothing is left."""

    live: dict[str, CallInfo] = field(default_factory=dict)
    finished: int = 0


async def run_call(websocket: WebSocket, chain: Chain, calls: CallRegistry, gate: CallGate) -> None:
    stream = TwilioMediaStream(websocket)
    try:
        start = await stream.wait_for_start(START_TIMEOUT_SECS)
    except (asyncio.TimeoutError, ProtocolError, StreamClosed) as exc:
        logger.warning(f"media stream refused before start: {exc or 'timed out'}")
        await stream.close(CLOSE_POLICY_VIOLATION, "expected connected/start")
        return
    refusal = await gate.check_stream(start)
    if refusal is not None:
        logger.warning(f"media stream {start.stream_sid} refused: {refusal}")
        await stream.close(CLOSE_POLICY_VIOLATION, refusal)
        return
    params = start.custom_parameters
    call = CallInfo(call_sid=start.call_sid or params.get("callSid", ""), stream_sid=start.stream_sid,
                    account_sid=start.account_sid, caller=params.get("caller", ""),
                    callee=params.get("callee", ""), parameters=params, stream=stream)
    key = f"{call.call_sid}/{call.stream_sid}"
    calls.live[key] = call
    logger.info(f"call {call.call_sid}: started, stream {call.stream_sid}, from {call.caller or 'unknown'}")
    try:
        await _run_pipeline(chain, call)
    except Exception as exc:  # one call's failure must not reach the server or other calls
        logger.exception(f"call {call.call_sid}: pipeline failed: {exc}")
        await stream.close(CLOSE_INTERNAL_ERROR, "bridge error")
    finally:
        calls.live.pop(key, None)
        calls.finished += 1
        await stream.close()
        logger.info(f"call {call.call_sid}: ended")


async def _run_pipeline(chain: Chain, call: CallInfo) -> None:
    pipeline = build_pipeline(chain, call)
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
        name=f"call-{call.call_sid}",
    )
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    await runner.run()
