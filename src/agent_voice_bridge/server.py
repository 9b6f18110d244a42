"""The HTTP face of the bridge: ``POST /incoming`` (TwiML), ``WS /media-stream``, ``GET /healthz``.

The server knows nothing about which stages exist: it asks its :class:`ChainSource`
which checked chain each call gets, and builds a fresh pipeline from it for that call. Every Twilio
webhook goes through :class:`SignedWebhooks` (the signature), every call through
the :class:`CallGate` (policy, limits, stream token).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response, WebSocket
from loguru import logger

from agent_voice_bridge import metrics
from agent_voice_bridge.calls.records import recall, record_refusal
from agent_voice_bridge.calls.registry import CallRegistry
from agent_voice_bridge.calls.warm_transfer import WarmTransfers
from agent_voice_bridge.calls.session import run_call
from agent_voice_bridge.chain_source import ChainSource
from agent_voice_bridge.configuration import ServerSetup
from agent_voice_bridge.lines import Lines
from agent_voice_bridge.reloading import Reloader
from agent_voice_bridge.log_values import shown
from agent_voice_bridge.observability.tracing import call_tracer
from agent_voice_bridge.pipelines.chain import Chain
from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.security import CallGate
from agent_voice_bridge.security.gate import no_line
from agent_voice_bridge.security.limits import LimitStore, open_store
from agent_voice_bridge.security.mode import DEVELOPMENT_WARNING
from agent_voice_bridge.security.signatures import public_url
from agent_voice_bridge.services import message_transcriber
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.twilio_stream import CLOSE_POLICY
from agent_voice_bridge.transports.twiml import STREAM_PATH, connect_twiml
from agent_voice_bridge.web import softphone_router
from agent_voice_bridge.web.body_limit import BodyLimit
from agent_voice_bridge.web.browser_guard import BrowserHostGuard, BrowserHosts
from agent_voice_bridge.web.calls_api import calls_router
from agent_voice_bridge.web.outbound import outbound_router
from agent_voice_bridge.web.transfer import transfer_router
from agent_voice_bridge.web.webhooks import SignedWebhooks

CONFIG_ENV = "VOICE_BRIDGE_CONFIG"


def freeze_start_up_objects() -> None:
    """Take everything loaded at start-up out of the garbage collector's sight.

    pipecat, the AI SDKs and the model leave ~160,000 objects that live as long as the
    process; a full collection walks them all, ~75 ms with the event loop stopped, and
    a busy server (frames allocated 50 times a second per call) runs them again and again:
    in the benchmark, 100 calls starting together each stalled 150–250 ms. Frozen, they
    are skipped.
    """
    gc.collect()
    gc.freeze()


def open_storage(config: BridgeConfig) -> CallStore | None:
    return CallStore(config.storage.url) if config.storage.url else None


@contextlib.asynccontextmanager
async def live_edits(reloader: Reloader | None) -> AsyncIterator[None]:
    """While the app serves: reload on a change to its files (watchfiles) and on SIGHUP."""
    if reloader is None:
        yield
        return
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    watcher = asyncio.create_task(reloader.watch(stop), name="config-watcher")
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reloader.reload("SIGHUP")))
        on_hangup = True
    except (RuntimeError, ValueError):  # not the main thread (an app served in a test's thread): watching only
        on_hangup = False
    try:
        yield
    finally:
        if on_hangup:
            loop.remove_signal_handler(signal.SIGHUP)
        stop.set()
        try:
            await asyncio.wait_for(watcher, 5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            watcher.cancel()


def create_app(config: BridgeConfig, chain: Chain | Lines, store: LimitStore | None = None,
               storage: CallStore | None = None, setup: ServerSetup | None = None) -> FastAPI:
    """The app serving ``chain``, or each of ``lines`` on its numbers (swap them with ``app.state.chains``).
    ``storage`` defaults to ``storage.url`` from the config (None: keep nothing). ``setup``: the files
    ``chain`` was loaded from; the app then reloads them when they change and on SIGHUP (live edits)."""
    storage = storage if storage is not None else open_storage(config)
    tracer = call_tracer(config.observability)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if gate.mode == "development":
            logger.warning(DEVELOPMENT_WARNING)
        if storage is not None:
            await storage.migrate()
            logger.info(f"call records: {storage.url_for_display}")
        freeze_start_up_objects()
        async with live_edits(reloader):
            yield
        await transfers.close()
        if tracer is not None:
            await asyncio.to_thread(tracer.shutdown)  # the last calls' traces go out before the process ends
        if storage is not None:
            await message_transcriber.drain()  # a message being transcribed keeps its transcript
            await storage.close()

    app = FastAPI(title="agent-voice-bridge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=config.server.max_body_bytes)  # every route, before any parsing
    chains = ChainSource(chain, config)
    for line in chains.lines:
        line.chain.warm_up()
    server = config.server
    gate = CallGate(config, store or open_store(config.security.store, server.port))
    browsers = BrowserHosts(server, development=gate.mode == "development")
    app.add_middleware(BrowserHostGuard, hosts=browsers)  # DNS rebinding: /phone*, /calls* on localhost only
    calls = CallRegistry()
    transfers = calls.transfers = WarmTransfers(config.twilio, gate, storage)
    app.state.calls = calls
    app.state.chains = chains
    reloader = Reloader(setup, chains) if setup is not None else None
    app.state.reloader = reloader
    app.state.gate = gate
    app.state.storage = storage
    webhooks = SignedWebhooks(gate, server)
    app.state.draining = False

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "draining" if app.state.draining else "ok", "live_calls": len(calls.live),
                "finished_calls": calls.finished, "refused_streams": calls.refused, "pid": os.getpid(),
                "pipeline": chains.current.source, "security": gate.mode,
                "lines": {line.name: {"numbers": line.reached_by(), "pipeline": line.chain.source}
                          for line in chains.lines},
                **({"config": reloader.status()} if reloader is not None else {}),
                **({"warning": DEVELOPMENT_WARNING} if gate.mode == "development" else {})}

    @app.post("/incoming")
    async def incoming(request: Request) -> Response:
        if app.state.draining:
            # 503 makes Twilio use the number's fallback URL (another instance).
            metrics.REFUSED.labels("draining").inc()
            return Response("shutting down", status_code=503)
        form = await webhooks.form(request)
        call_sid = form.get("CallSid", "")
        line = chains.line_for(form.get("To", ""))  # chosen once, here, and bound into the stream token
        refusal = no_line(form.get("To", "")) if line is None else await gate.admit(form, line.policy)
        if refusal is not None:
            metrics.REFUSED.labels(refusal.kind).inc()
            logger.info(f"call {shown(call_sid) or '?'}: refused ({refusal.reason})")
            if storage is not None and call_sid:
                await record_refusal(storage, form, refusal.reason, line.chain.source if line else "",
                                     line.name if line else "")
            return Response(refusal.twiml, media_type="application/xml")
        assert line is not None
        chain = line.chain
        url = webhooks.stream_url(request)
        parameters = {name: form[field] for name, field in (("caller", "From"), ("callee", "To"),
                                                            ("callSid", "CallSid")) if form.get(field)}
        parameters.update(gate.stream_parameters(call_sid, form.get("From", ""), form.get("To", ""), line.name))
        if call_sid:
            early = CallInfo(call_sid=call_sid, stream_sid="", caller=form.get("From", ""),
                             callee=form.get("To", ""), parameters=parameters, line=line.name)
            if storage is not None:
                early.memory = await recall(storage, chain, early.caller, call_sid)
            chain.connect_early(early)
        logger.info(f"call {shown(call_sid) or '?'}: incoming from {shown(form.get('From', 'unknown'))} "
                    f"on line {line.name}, stream {shown(url, 300)}")
        return Response(connect_twiml(url, parameters), media_type="application/xml")

    @app.websocket(STREAM_PATH)
    async def media_stream(websocket: WebSocket) -> None:
        if not browsers.origin_ok(websocket.headers):  # another site's page; Twilio sends no Origin
            metrics.REFUSED.labels("origin").inc()
            logger.warning(f"media stream handshake: refused Origin {shown(websocket.headers.get('origin'))} "
                           "(only the softphone's own page may open a stream)")
            calls.refused += 1
            await websocket.close(code=CLOSE_POLICY)
            return
        if gate.check_ws:
            url = public_url(websocket.url, websocket.headers, public_base=server.public_url,
                             trust_proxy=server.trust_proxy, websocket=True)
            if not gate.signature_ok(url, {}, websocket.headers.get("x-twilio-signature")):
                metrics.REFUSED.labels("signature").inc()
                logger.warning("media stream handshake: bad or missing Twilio signature "
                               f"(URL taken as {shown(url, 300)})")
                calls.refused += 1
                await websocket.close(code=CLOSE_POLICY)
                return
        await websocket.accept()
        await run_call(websocket, chains, calls, gate, config, storage, tracer)

    app.include_router(softphone_router(config, gate, chains))
    app.include_router(calls_router(config, storage, chains))
    app.include_router(outbound_router(config, gate, webhooks, chains, storage))
    app.include_router(transfer_router(gate, webhooks, storage, chains, transfers))
    return app


def app_from_environment() -> FastAPI:
    """uvicorn factory for ``serve --workers N``: each worker process loads the same file."""
    from agent_voice_bridge.lines import load_lines

    setup, lines = load_lines(os.environ.get(CONFIG_ENV) or None)
    port = int(os.environ.get("VOICE_BRIDGE_PORT", setup.config.server.port))
    config = setup.config.model_copy(update={"server": setup.config.server.model_copy(update={"port": port})})
    return create_app(config, lines, setup=setup)
