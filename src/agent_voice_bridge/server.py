"""The HTTP face of the bridge: ``POST /incoming`` (TwiML), ``WS /media-stream``, ``GET /healthz``.

The server knows nothing about which stages exist: it holds one checked
:class:`Chain` and builds a fresh pipeline from it for every call.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response, WebSocket
from loguru import logger
from twilio.twiml.voice_response import Connect, VoiceResponse

from agent_voice_bridge.call_session import CLOSE_POLICY_VIOLATION, CallRegistry, run_call
from agent_voice_bridge.pipelines.chain import Chain
from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.security import CallGate

STREAM_PATH = "/media-stream"


def stream_url(public_url: str | None, request: Request) -> str:
    """The ``wss://`` URL Twilio should open: from ``server.public_url``, else from the request."""
    base = public_url or str(request.base_url).rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):] + STREAM_PATH
    return "ws://" + base.removeprefix("http://") + STREAM_PATH


def connect_twiml(url: str, form: dict[str, str]) -> str:
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=url)
    for name, field in (("caller", "From"), ("callee", "To"), ("callSid", "CallSid")):
        if form.get(field):
            stream.parameter(name=name, value=form[field])
    response.append(connect)
    return str(response)


def create_app(config: BridgeConfig, chain: Chain) -> FastAPI:
    app = FastAPI(title="agent-voice-bridge", docs_url=None, redoc_url=None)
    gate = CallGate(config)
    calls = CallRegistry()
    app.state.calls = calls
    app.state.chain = chain

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "live_calls": len(calls.live), "finished_calls": calls.finished,
                "pipeline": chain.source}

    @app.post("/incoming")
    async def incoming(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        refusal = await gate.check_incoming(form)
        if refusal is not None:
            logger.info(f"call {form.get('CallSid', '?')}: refused ({refusal.reason})")
            return Response(refusal.twiml, media_type="application/xml")
        url = stream_url(config.server.public_url, request)
        logger.info(f"call {form.get('CallSid', '?')}: incoming from {form.get('From', 'unknown')}, stream {url}")
        return Response(connect_twiml(url, form), media_type="application/xml")

    @app.websocket(STREAM_PATH)
    async def media_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        await run_call(websocket, chain, calls, gate)

    return app
