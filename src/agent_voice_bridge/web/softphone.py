"""``GET /phone``: a softphone page that calls this server's line from a browser tab.

The page speaks the Twilio Media Streams protocol itself (``connected``, ``start``,
20 ms μ-law ``media``, mark echoes as its own playback passes them, ``clear``,
``stop``) to the very ``/media-stream`` endpoint Twilio uses, so a browser call
exercises the production path, stream token check included.

Who may use it:

* ``server.softphone`` unset: on when the server has no Twilio credentials (local
  development: nothing to configure), off when it has them (404).
* ``server.softphone: true`` on a server with ``twilio.auth_token`` (or whenever
  ``server.api_key`` is set): every request but the static files needs the key
  (``X-API-Key`` header, ``Authorization: Bearer`` or ``?key=``); on a server with a
  token and no key the softphone answers 503. ``GET /phone/token`` hands out the
  same one-time stream token a signed ``/incoming`` would put into the TwiML, so
  the page's ``start`` passes :meth:`CallGate.check_stream` like Twilio's does.
"""

from __future__ import annotations

import html
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from loguru import logger

from agent_voice_bridge.chain_source import ChainSource
from agent_voice_bridge.lines import Lines
from agent_voice_bridge.pipelines.chain import Chain
from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.security import CallGate
from agent_voice_bridge.transports.call_info import SOFTPHONE_CALLER, CallInfo
from agent_voice_bridge.web.api_key import key_matches, presented_key
from agent_voice_bridge.transports.twiml import STREAM_PATH

STATIC_FILES = {
    "phone.js": "text/javascript; charset=utf-8",
    "phone-worklet.js": "text/javascript; charset=utf-8",
    "phone.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    # Everything the page needs comes from this server: no CDN, no inline code.
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "media-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",  # the key may be in the page's query
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
REPO_PIPELINES = Path(__file__).resolve().parents[3] / "pipelines"
"""The repository's ``pipelines/`` when running from a checkout (editable install)."""


def softphone_enabled(config: BridgeConfig) -> bool:
    """``server.softphone``, or by default: on unless Twilio credentials are configured."""
    if config.server.softphone is not None:
        return config.server.softphone
    return not (config.twilio.auth_token or config.twilio.account_sid)


def _asset(name: str) -> str:
    return resources.files(__name__.rpartition(".")[0]).joinpath(name).read_text(encoding="utf-8")


def _key_form(message: str) -> str:
    return ("<!doctype html><html lang=en><meta charset=utf-8><title>Softphone: API key needed</title>"
            "<link rel=stylesheet href=/phone/static/phone.css><body class=gate><main><h1>Softphone</h1>"
            f"<p>{html.escape(message)}</p><form method=get action=/phone>"
            "<label>API key (<code>server.api_key</code>) <input name=key type=password autocomplete=off "
            "autofocus required></label> <button>Open</button></form></main></body></html>")


def _stage_names(path: Path) -> list[str]:
    """The stage names of a pipeline file, read without expanding ``${VAR}`` (no values leave the server)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []
    if not isinstance(data, dict):
        return []
    stages = data.get("pipeline")
    if isinstance(stages, list):
        return [s if isinstance(s, str) else next(iter(s), "?") if isinstance(s, dict) else "?" for s in stages]
    ai = data.get("ai")
    if isinstance(ai, dict):
        return [f"(default chain with ai.provider: {ai.get('provider', 'gemini')})"]
    return []


def _stages(chain: Chain) -> list[dict[str, Any]]:
    return [{"position": s.position, "name": s.name, "side": s.side,
             "audio_in": str(s.audio_in) if s.audio_in else None,
             "audio_out": str(s.audio_out) if s.audio_out else None} for s in chain.stages]


def _same_file(source: str, path: Path) -> bool:
    return Path(source).exists() and Path(source).resolve() == path.resolve()


def pipeline_listing(lines: Lines) -> dict[str, Any]:
    """The server's lines (name, numbers, chain: stages, sides, formats; no parameter values), which of them
    the page may call, and the chains in ``pipelines/`` with the lines serving each."""
    first = lines.first.chain
    current = Path(first.source)
    folders = [Path.cwd() / "pipelines", REPO_PIPELINES]
    folders[:0] = dict.fromkeys(Path(line.chain.source).parent for line in lines
                                if Path(line.chain.source).parent.name == "pipelines")
    seen: set[Path] = set()
    available = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.y*ml")):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            serving = [line.name for line in lines if _same_file(line.chain.source, real)]
            available.append({"name": path.stem, "file": f"pipelines/{path.name}", "current": bool(serving),
                              "lines": serving, "serve": f"voice-bridge serve -c pipelines/{path.name}",
                              "stages": _stage_names(path)})
    if not available:  # an installed package (a container): the chains built into it
        for entry in sorted(resources.files("agent_voice_bridge.defaults").iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".yaml"):
                source = f"<built-in {entry.name}>"
                with resources.as_file(entry) as path:
                    stages = _stage_names(path)
                serving = [line.name for line in lines if line.chain.source == source]
                available.append({"name": f"built-in {entry.name.removesuffix('.yaml')}", "file": source,
                                  "current": bool(serving), "lines": serving, "stages": stages,
                                  "serve": "voice-bridge serve (no -c: the built-in chain for the AI key that is set)"})
    return {
        "current": {"source": first.source, "stages": _stages(first)},
        "lines": [{"name": line.name, "numbers": line.reached_by(), "default": line is lines.first,
                   "source": line.chain.source, "stages": _stages(line.chain)} for line in lines],
        "available": available,
        "note": "Calls from this page go to the line picked (the server's default line unless another is "
                "picked); a line's chain is its pipeline file's, as the server loaded it.",
    }


def softphone_router(config: BridgeConfig, gate: CallGate, chains: ChainSource) -> APIRouter:
    router = APIRouter()
    enabled = softphone_enabled(config)
    api_key = config.server.api_key or None
    needs_key = bool(config.twilio.auth_token or api_key)  # a configured key is always required
    misconfigured = ""
    if enabled and needs_key and not api_key:
        misconfigured = ("server.softphone is on and twilio.auth_token is set, but server.api_key is empty: "
                         "set it to use the softphone on this server")
    elif enabled and gate.check_ws:
        misconfigured = ("security.check_ws_signature is on: a browser cannot sign the media-stream handshake, "
                         "so the softphone cannot call this server")
    if enabled:
        if misconfigured:
            logger.warning(f"softphone: {misconfigured}")
        else:
            logger.info(f"softphone: GET /phone{' (needs server.api_key)' if needs_key else ''}")

    def available() -> None:
        if not enabled:
            raise HTTPException(status_code=404, detail="Not Found")
        if misconfigured:
            raise HTTPException(status_code=503, detail=misconfigured)

    def key_problem(request: Request) -> str | None:
        if not needs_key:
            return None
        assert api_key is not None
        presented = presented_key(request)
        if presented is None:
            return "This server needs its API key to open the softphone."
        if not key_matches(presented, api_key):
            logger.warning(f"softphone: wrong API key from {request.client.host if request.client else '?'}")
            return "That API key is not right."
        return None

    def authorised(request: Request) -> None:
        available()
        problem = key_problem(request)
        if problem:
            raise HTTPException(status_code=401, detail=problem, headers={"WWW-Authenticate": "Bearer"})

    @router.get("/phone", response_class=HTMLResponse, include_in_schema=False)
    async def phone_page(request: Request) -> Response:
        available()
        problem = key_problem(request)
        if problem:
            return HTMLResponse(_key_form(problem), status_code=401, headers=PAGE_HEADERS)
        return HTMLResponse(_asset("phone.html"), headers=PAGE_HEADERS)

    @router.get("/phone/static/{name}", include_in_schema=False)
    async def phone_static(name: str) -> Response:
        available()
        media_type = STATIC_FILES.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail="Not Found")
        return Response(_asset(name), media_type=media_type,
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @router.get("/phone/pipelines", include_in_schema=False)
    async def phone_pipelines(request: Request) -> JSONResponse:
        authorised(request)
        return JSONResponse(pipeline_listing(chains.lines), headers={"Cache-Control": "no-store"})

    @router.get("/phone/token", include_in_schema=False)
    async def phone_token(request: Request, line: str | None = None) -> JSONResponse:
        """A call SID and the ``start.customParameters`` a signed ``/incoming`` would have given Twilio for a
        call to ``line`` (a line's name; default: the server's default line). The line is bound into the
        stream token as ``/incoming`` binds it, so the page's stream runs that line's chain and no other."""
        authorised(request)
        if getattr(request.app.state, "draining", False):
            raise HTTPException(status_code=503, detail="shutting down")
        picked = chains.lines.first if line is None else chains.line_named(line)
        if picked is None:  # only a line the server has: the page's list may be older than a reload
            raise HTTPException(status_code=404, detail=f"no line {line[:64]!r} on this server; its lines: "
                                + ", ".join(known.name for known in chains.lines))
        call_sid = "CA" + uuid.uuid4().hex
        parameters = {"caller": SOFTPHONE_CALLER, "callee": "softphone", "callSid": call_sid}
        parameters.update(gate.stream_parameters(call_sid, parameters["caller"], parameters["callee"], picked.name))
        # The AI stage opens its session with this call's instructions, as /incoming does for Twilio's calls.
        picked.chain.connect_early(CallInfo(call_sid=call_sid, stream_sid="", caller=parameters["caller"],
                                            callee=parameters["callee"], parameters=parameters, line=picked.name))
        logger.info(f"call {call_sid}: softphone token issued to "
                    f"{request.client.host if request.client else 'unknown'} for line {picked.name}")
        return JSONResponse({"callSid": call_sid, "streamPath": STREAM_PATH, "parameters": parameters,
                             "line": picked.name, "pipeline": picked.chain.source},
                            headers={"Cache-Control": "no-store"})

    @router.get("/phone/calls/{call_sid}/turns", include_in_schema=False)
    async def phone_call_turns(call_sid: str, request: Request) -> JSONResponse:
        """A live softphone call's per-turn latency breakdown as the server measured it (the page shows it
        beside its own figures)."""
        authorised(request)
        live = next((c for c in request.app.state.calls.live.values()
                     if c.info.call_sid == call_sid and c.info.caller == SOFTPHONE_CALLER), None)
        if live is None:
            raise HTTPException(status_code=404, detail="no softphone call with that SID is live")
        return JSONResponse(live.info.timeline.records(), headers={"Cache-Control": "no-store"})

    @router.get("/phone/calls/{call_sid}/events", include_in_schema=False)
    async def phone_call_events(call_sid: str, request: Request) -> JSONResponse:
        """What a softphone call's page is shown besides its audio (a transfer: what Twilio would have been
        asked to do), while it is live and for a while after it ended (a transfer ends it)."""
        authorised(request)
        events = request.app.state.calls.events_of(call_sid)
        if events is None:
            raise HTTPException(status_code=404, detail="no recent softphone call with that SID")
        return JSONResponse(events, headers={"Cache-Control": "no-store"})

    return router
