"""``GET /calls``, ``GET /calls/{sid}``: stored records and transcripts as JSON; ``POST /calls`` dials out.

Records name callers and hold what they said, so the API is closed unless
``server.api_key`` is set, and then needs the key on every request.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from agent_voice_bridge.dialing import dial, dial_problem
from agent_voice_bridge.phone_numbers import e164
from agent_voice_bridge.chain_source import ChainSource
from agent_voice_bridge.lines import Line
from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.storage import CallRecord, CallStore, Turn
from agent_voice_bridge.storage.records import Message
from agent_voice_bridge.transports.twilio_rest import OutboundError, TwilioRefused, TwilioUnreachable
from agent_voice_bridge.web.api_key import key_matches, presented_key


def as_json(item: CallRecord | Turn | Message) -> dict[str, Any]:
    """A stored dataclass as JSON: datetimes in ISO 8601, a record with its duration."""
    data = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in dataclasses.asdict(item).items()}
    if isinstance(item, CallRecord):
        data["duration_s"] = item.duration_s
    return data


class DialRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(description="The number to call, E.164 (+15551234567).")
    parameters: dict[str, str] = Field(default_factory=dict, description="Facts for the instructions' "
                                       "{placeholders}: why we are calling, for whom…")
    line: str | None = Field(default=None, description="The line whose chain runs the call (it calls from the "
                             "line's first number); default: the line of from, else of twilio.phone_number.")
    from_: str | None = Field(default=None, alias="from", description="The number to call from (E.164): "
                              "one of the server's; its line runs the call.")


def outbound_line(chains: ChainSource, name: str | None, from_number: str | None,
                  phone_number: str) -> tuple[Line, str]:
    """The line an outbound call runs and the number it calls from: the named line (from its first number),
    else the line of ``from`` (else of ``twilio.phone_number``); HTTP 400 when there is none."""
    if name:
        line = chains.line_named(name)
        if line is None:
            raise HTTPException(status_code=400, detail=f"no line {name!r}; lines: "
                                f"{', '.join(l.name for l in chains.lines)}")
        return line, from_number or (line.numbers[0] if line.numbers else phone_number)
    number = e164(from_number) if from_number else phone_number
    if from_number and not number:
        raise HTTPException(status_code=400, detail=f"from {from_number!r} is not an E.164 number (+15551234567)")
    line = chains.line_for(number or "")
    if line is None:
        raise HTTPException(status_code=400, detail=f"no line takes {number!r}: name a line, or call from one "
                            "of its numbers")
    return line, number or phone_number


def calls_router(config: BridgeConfig, storage: CallStore | None, chains: ChainSource) -> APIRouter:
    router = APIRouter()
    api_key = config.server.api_key or None

    def authorised(request: Request) -> CallStore | None:
        if api_key is None:
            raise HTTPException(status_code=403, detail="the calls API is off: set server.api_key to use it")
        presented = presented_key(request)
        if presented is None or not key_matches(presented, api_key):
            logger.warning(f"calls API: {'wrong' if presented else 'missing'} API key from "
                           f"{request.client.host if request.client else '?'}")
            raise HTTPException(status_code=401, detail="this needs the server's API key",
                                headers={"WWW-Authenticate": "Bearer"})
        return storage

    def stored(request: Request) -> CallStore:
        store = authorised(request)
        if store is None:
            raise HTTPException(status_code=404, detail="calls are not stored on this server (storage.url is empty)")
        return store

    @router.post("/calls", status_code=201)
    async def place(request: Request, body: DialRequest) -> dict[str, Any]:
        """Place an outbound call that runs this server's chain (Twilio REST)."""
        store = authorised(request)
        problem = dial_problem(config)
        if problem:
            raise HTTPException(status_code=503, detail=problem)
        line, from_number = outbound_line(chains, body.line, body.from_, config.twilio.phone_number)
        try:
            placed = await dial(config, store, body.to, body.parameters, line.chain.source, line.name, from_number)
        except (TwilioUnreachable, TwilioRefused) as exc:  # Twilio's trouble, not the request's: one line, no trace
            logger.warning(f"dialling failed: {exc}")
            raise HTTPException(status_code=503 if isinstance(exc, TwilioUnreachable) else 502,
                                detail=str(exc)) from None
        except OutboundError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        logger.info(f"call {placed.call_sid}: dialling {body.to} ({placed.status})")
        return {"call_sid": placed.call_sid, "status": placed.status}

    @router.get("/calls")
    async def list_calls(request: Request, limit: int = Query(20, ge=1, le=500),
                         caller: str | None = None, line: str | None = None) -> dict[str, Any]:
        store = stored(request)
        number = None if caller is None else e164(caller)  # the one parser: as the records were written
        if caller is not None and number is None:
            raise HTTPException(status_code=400, detail=f"caller {caller!r} is not an E.164 number (+15551234567)")
        return {"calls": [as_json(r) for r in await store.recent_calls(limit, caller=number, line=line)]}

    @router.get("/calls/{call_sid}")
    async def show_call(request: Request, call_sid: str) -> dict[str, Any]:
        store = stored(request)
        record = await store.get_call(call_sid)
        if record is None:
            raise HTTPException(status_code=404, detail=f"no call {call_sid}")
        return {"call": as_json(record), "transcript": [as_json(t) for t in await store.transcript(call_sid)],
                "messages": [as_json(m) for m in await store.messages(call_sid)]}

    return router
