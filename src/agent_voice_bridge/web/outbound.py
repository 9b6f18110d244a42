"""Twilio's webhooks for calls the bridge places, and status callbacks for every call.

``POST /outbound``: the callee answered. With answering-machine detection Twilio
says who (``AnsweredBy``): a machine gets ``outbound.on_machine.say`` after the
beep and a hang-up, a person gets the chain, with the parameters ``dial`` put in
the (signed) URL as the stream's ``<Parameter>``s. ``POST /status``: Twilio's
status callbacks (ringing, answered, busy, no-answer, failed, completed) update
the call's record. Both are signed like every webhook.
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Request, Response
from loguru import logger
from twilio.twiml.voice_response import VoiceResponse

from agent_voice_bridge.dialing import ANSWER_PATH, RESERVED, STATUS_PATH
from agent_voice_bridge.chain_source import ChainSource
from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.security import CallGate
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.twiml import connect_twiml
from agent_voice_bridge.web.webhooks import SignedWebhooks

NOT_CONNECTED = {"busy", "no_answer", "failed", "canceled"}
"""Final statuses of a call that never reached the stream: they are its outcome too."""


def machine_twiml(say: str | None) -> str:
    response = VoiceResponse()
    if say:
        response.say(say)
    response.hangup()
    return str(response)


def outbound_router(config: BridgeConfig, gate: CallGate, webhooks: SignedWebhooks, chains: ChainSource,
                    storage: CallStore | None) -> APIRouter:
    router = APIRouter()
    on_machine = config.outbound.on_machine.say

    async def record(call_sid: str, **fields: object) -> None:
        if storage is None or not call_sid:
            return
        try:
            await storage.update_call(call_sid, **fields)
        except Exception as exc:  # Twilio retries nothing here; the log says what the record misses
            logger.error(f"call {call_sid}: storing {sorted(fields)} failed ({exc.__class__.__name__}: {exc})")

    @router.post(ANSWER_PATH)
    async def answered(request: Request) -> Response:
        form = await webhooks.form(request)
        call_sid, answered_by = form.get("CallSid", ""), form.get("AnsweredBy", "")
        if answered_by.startswith("machine") or answered_by == "fax":
            logger.info(f"call {call_sid}: answered by {answered_by}; "
                        f"{'leaving the message' if on_machine else 'hanging up'}")
            await record(call_sid, outcome="left_message" if on_machine and answered_by != "fax" else "machine",
                         reason=f"answered by {answered_by}")
            return Response(machine_twiml(on_machine if answered_by != "fax" else None), media_type="application/xml")
        parameters = {k: v for k, v in request.query_params.items() if k not in RESERVED}
        parameters.update({"caller": form.get("From", ""), "callee": form.get("To", ""), "callSid": call_sid,
                           "direction": "outbound"})
        if answered_by:
            parameters["answeredBy"] = answered_by
        named = request.query_params.get("line")  # dial's choice, in the URL Twilio signed
        line = chains.line_named(named) if named else chains.line_for(parameters["caller"])
        if line is None:
            logger.warning(f"call {call_sid}: answered, but no line {named or parameters['caller']!r} here")
            return Response(machine_twiml(None), media_type="application/xml")
        parameters.update(gate.stream_parameters(call_sid, parameters["caller"], parameters["callee"], line.name))
        if call_sid:
            early = CallInfo(call_sid=call_sid, stream_sid="", caller=parameters["caller"],
                             callee=parameters["callee"], parameters=parameters, line=line.name)
            line.chain.connect_early(early)
        logger.info(f"call {call_sid}: {form.get('To', '?')} answered{f' ({answered_by})' if answered_by else ''}")
        return Response(connect_twiml(webhooks.stream_url(request), parameters), media_type="application/xml")

    @router.post(STATUS_PATH)
    async def status(request: Request) -> Response:
        form = await webhooks.form(request)
        call_sid, status = form.get("CallSid", ""), form.get("CallStatus", "").replace("-", "_")
        fields: dict[str, object] = {"status": status}
        if status in NOT_CONNECTED:
            fields.update(outcome=status, ended_at=datetime.now(timezone.utc))
        logger.info(f"call {call_sid}: status {status}")
        await record(call_sid, **fields)
        return Response(status_code=204)

    return router
