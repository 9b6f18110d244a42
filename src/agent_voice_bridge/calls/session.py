"""Run one call: read Twilio's ``start``, check it, build the chain's pipeline, run it to the end.

Everything a call owns (its pipeline, worker, tasks) lives and dies here, so an
error in one call is logged and closes that call's socket only. When the bridge
itself ends a call (time limit, shutdown) the caller hears a short goodbye first.
"""

from __future__ import annotations

import asyncio
import functools
import time

from loguru import logger
from pipecat.frames.frames import ErrorFrame
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner
from starlette.websockets import WebSocket

from agent_voice_bridge import metrics
from agent_voice_bridge.calls.handover import move_to_fallback, take_over
from agent_voice_bridge.calls.live_call import LiveCall, StreamHome
from agent_voice_bridge.calls.records import call_began, close_records, open_records
from agent_voice_bridge.calls.registry import CallRegistry
from agent_voice_bridge.chain_source import ChainSource
from agent_voice_bridge.log_values import shown
from agent_voice_bridge.observability.timeline import CallClock, TimelineObserver
from agent_voice_bridge.observability.tracing import CallTracer
from agent_voice_bridge.pipelines.builder import build_pipeline
from agent_voice_bridge.pipelines.chain import Chain, build_chain
from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.pipelines.fallback import load_fallback
from agent_voice_bridge.security import CallGate
from agent_voice_bridge.security.gate import LINE_PARAMETER
from agent_voice_bridge.security.signatures import public_url
from agent_voice_bridge.security.stream_tokens import PARAMETER as TOKEN_PARAMETER
from agent_voice_bridge.services.transfer import AFTER_TRANSFER, TRANSFER_STATUS, TRANSFERRED_TO
from agent_voice_bridge.services.transfer_brief import BRIEF, TRANSFER_ROLE
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.twilio_protocol import ProtocolError
from agent_voice_bridge.transports.twilio_stream import CLOSE_POLICY, StreamClosed, TwilioMediaStream
from agent_voice_bridge.transports.twiml import stream_url

START_TIMEOUT_SECS = 10.0
BRIEF_SPEAKING_SECS = 15.0
"""What a warm transfer's brief may take to say, before the person's ``brief_timeout_secs`` to decide begin."""
CLOSE_INTERNAL_ERROR = 1011


async def run_call(websocket: WebSocket, chains: ChainSource, calls: CallRegistry, gate: CallGate,
                   config: BridgeConfig, storage: CallStore | None = None, tracer: CallTracer | None = None) -> None:
    """Run the call on this stream with the chain ``chains`` gives it now; it keeps that chain to its end."""
    stream = TwilioMediaStream(websocket)
    try:
        start = await stream.wait_for_start(START_TIMEOUT_SECS)
    except (asyncio.TimeoutError, ProtocolError, StreamClosed) as exc:
        logger.warning(f"media stream refused before start: {shown(str(exc) or 'timed out', 200)}")
        calls.refused += 1
        metrics.REFUSED.labels("bad_stream").inc()
        await stream.close(CLOSE_POLICY, "expected connected/start")
        return
    params = start.custom_parameters
    named = params.get(LINE_PARAMETER)  # bound into the stream token by /incoming; else the number called
    line = chains.line_named(named) if named else chains.line_for(
        params.get("caller" if params.get("direction") == "outbound" else "callee", ""))
    try:
        refusal = await gate.check_stream(start, line.policy.max_call_seconds if line else None)
    except Exception as exc:  # whatever a forged start holds, the answer is a counted 1008, never a traceback
        refusal = f"stream check failed ({exc.__class__.__name__})"
    if refusal is not None:
        logger.warning(f"media stream {shown(start.stream_sid)} refused: {refusal}")
        calls.refused += 1
        metrics.REFUSED.labels("stream_token" if "token" in refusal else "busy").inc()
        await stream.close(CLOSE_POLICY, refusal)
        return
    moving = calls.moving_to_new_stream(start.call_sid)
    if moving is not None and await moving.continue_on(stream):
        return  # the call pressed keys (send_digits) and goes on here; its first stream's handler runs it
    if line is None:
        refusal = f"no line {named!r} on this server" if named else "no line takes this number"
        logger.warning(f"media stream {shown(start.stream_sid)} refused: {refusal}")
        calls.refused += 1
        metrics.REFUSED.labels("no_line").inc()
        await stream.close(CLOSE_POLICY, refusal)
        return
    info = CallInfo(call_sid=start.call_sid or params.get("callSid", ""), stream_sid=start.stream_sid,
                    account_sid=start.account_sid, caller=params.get("caller", ""),
                    callee=params.get("callee", ""), parameters=params, stream=stream, line=line.name)
    back = params.get(AFTER_TRANSFER)  # the same call, back from a transfer nobody took
    briefed = params.get(TRANSFER_ROLE) == BRIEF  # the person of a warm transfer: the AI briefs them at once
    if info.direction == "outbound" and config.outbound.first_turn == "wait_for_hello" and not (back or briefed):
        info.hello_timeout_secs = config.outbound.hello_timeout_secs
    # Back from a transfer nobody took: a new session of the same call (the old one ended as ``transferred``),
    # unlike a stream after send_digits, which joined the running call above.
    chain = voicemail_chain() if back == "voicemail" else line.chain
    base = webhook_base(websocket, config)
    live = LiveCall(info, chain, config.twilio, webhook_base=base, transfers=calls.transfers,
                    stream_home=stream_home(base, gate, info))
    if briefed:
        live.brief_deadline(BRIEF_SPEAKING_SECS + float(params.get("briefSecs") or 15))
    if back == "voicemail":  # a message for the person nobody reached: the call's outcome, however it ends
        live.outcome = live.fell_back = "voicemail"
        live.reason = f"transfer to {params.get(TRANSFERRED_TO, '?')}: {params.get(TRANSFER_STATUS, '?')}"
    info.control = live
    with logger.contextualize(call_sid=shown(info.call_sid)):  # every log line of this call carries its SID
        if storage is not None and back:  # the same call as before the transfer: its record and clock go on
            info.started_at = await call_began(storage, info.call_sid) or info.started_at
        await open_records(storage, info, chain, line.storage)
        await _live(live, stream, calls, gate, line.policy.max_call_seconds, tracer)


def stream_home(base: str, gate: CallGate, info: CallInfo) -> StreamHome:
    """Where this call's next stream connects: the bridge's stream URL as Twilio reaches it (``base``, see
    :func:`webhook_base`), the same parameters, and a fresh one-time token."""

    def parameters() -> dict[str, str]:
        kept = {k: v for k, v in info.parameters.items() if k != TOKEN_PARAMETER}
        return {**kept, **gate.stream_parameters(info.call_sid, kept.get("caller", ""), kept.get("callee", ""),
                                                 info.line)}

    return StreamHome(stream_url(base), parameters)


async def _live(live: LiveCall, stream: TwilioMediaStream, calls: CallRegistry, gate: CallGate,
                max_call_seconds: float, tracer: CallTracer | None = None) -> None:
    info = live.info
    key = f"{info.call_sid}/{info.stream_sid}"
    calls.live[key] = live
    metrics.LIVE_CALLS.labels(info.line).inc()
    logger.info(f"call {shown(info.call_sid)}: started, stream {shown(info.stream_sid)}, "
                f"from {shown(info.caller or 'unknown')}, line {info.line}")
    limit = asyncio.get_running_loop().call_later(
        max_call_seconds,
        lambda: asyncio.ensure_future(live.end("goodbye_time_limit", "time limit reached", "time_limit")))
    try:
        running: Chain | None = live.chain
        while running is not None:
            await _run_pipeline(running, live)
            running = await take_over(live)  # the AI failed and its stage names a fallback chain
        if live.goodbye is not None and info.stream is not None:
            await info.stream.say_goodbye(live.goodbye)  # the call's stream now: keys pressed may have moved it
    except Exception as exc:  # one call's failure must not reach the server or other calls
        live.outcome = "error"
        logger.exception(f"call {shown(info.call_sid)}: pipeline failed: {exc}")
        await (info.stream or stream).close(CLOSE_INTERNAL_ERROR, "bridge error")
    finally:
        limit.cancel()
        await live.settle_transfer()
        for pending in (live._hang_up_task, live._brief_timer):  # the caller hung up first
            if pending is not None:
                pending.cancel()
        metrics.LIVE_CALLS.labels(info.line).dec()
        metrics.CALLS.labels(live.outcome, info.line).inc()  # counted before the caller sees the stream close
        await gate.call_ended(info.call_sid)
        calls.keep_events(live)  # before the stream closes: the softphone page asks for them when it has
        await stream.close()
        if info.stream is not None and info.stream is not stream:
            await info.stream.close()
        live.release_stream()
        await close_records(live)  # before the call leaves the registry: a draining shutdown waits for its record
        calls.live.pop(key, None)
        calls.finished += 1
        info.timeline.report(final=True)
        if tracer is not None:
            tracer.export_call(info, live.outcome)
        logger.info(summary_line(live))


def webhook_base(websocket: WebSocket, config: BridgeConfig) -> str:
    """``https://host`` as Twilio reaches this server (``server.public_url``, else the stream's own host)."""
    url = public_url(websocket.url, websocket.headers, public_base=config.server.public_url,
                     trust_proxy=config.server.trust_proxy)
    return url.split("?")[0].removesuffix(websocket.url.path)


@functools.cache
def voicemail_chain() -> Chain:
    """The built-in voicemail chain, for a call whose transfer nobody took (``on_no_answer: voicemail``)."""
    return build_chain(load_fallback("voicemail", ""), fallbacks=False)


def summary_line(live: LiveCall) -> str:
    """One line per call, for grepping and for people."""
    info, stats, playback = live.info, live.info.stats, live.info.playback
    first = f"{stats.first_reply_ms:.0f} ms" if stats.first_reply_ms is not None else "-"
    return (f"call {shown(info.call_sid)} ended: outcome={live.outcome} duration={time.time() - info.started_at:.1f}s "
            f"from={shown(info.caller or '-')} replies={stats.replies} first_reply={first} barge_ins={stats.barge_ins} "
            f"session_switches={stats.session_switches} marks={playback.marks_echoed}/{playback.marks_sent} "
            f"{info.timeline.summary()}")


async def _run_pipeline(chain: Chain, live: LiveCall) -> None:
    pipeline = build_pipeline(chain, live.info)
    clock = CallClock()  # the frames' times on time.monotonic, the clock of the call's timeline
    live.worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000,
                              enable_usage_metrics=live.info.journal is not None),  # the record's token counts
        enable_rtvi=False,
        enable_turn_tracking=False,
        clock=clock,
        observers=[TimelineObserver(live.info.timeline, clock)],
        idle_timeout_secs=None,
        name=f"call-{live.info.call_sid}",
    )

    @live.worker.event_handler("on_pipeline_error")
    async def on_pipeline_error(worker: PipelineWorker, frame: ErrorFrame) -> None:
        # A stage that can no longer do its job (the AI backend is gone): move the caller to the fallback
        # chain, or apologise and hang up; never leave the caller in dead air.
        if frame.processor is not None and not frame.processor.is_usable:
            reason = f"{frame.processor} failed: {frame.error}"
            if chain.fallback is not None:
                move_to_fallback(live, chain.fallback, reason)
            else:
                live.reason = live.reason or reason  # the provider's own words, for the call record
                asyncio.ensure_future(live.end("apology", reason, "backend_failure"))

    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(live.worker)
    await runner.run()
