"""``POST /transfer/done``: Twilio's ``<Dial action>`` after the AI put the caller through to a person.

``DialCallStatus`` says how the dial ended. ``completed``/``answered``: the person
took the call and it is over, so hang up. Anything else (``no-answer``, ``busy``,
``failed``, ``canceled``): nobody took it, and the caller must not be left on a dead
line: the call connects a new media stream (signed token, the same line) whose
parameters say which transfer failed and how, so the AI opens with that news, or the
built-in voicemail takes a message (``on_no_answer: voicemail``). The call's record
gets the dial's status either way.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from loguru import logger
from twilio.twiml.voice_response import VoiceResponse

from agent_voice_bridge.calls.transfer import TRANSFER_DONE_PATH
from agent_voice_bridge.log_values import shown
from agent_voice_bridge.security import CallGate
from agent_voice_bridge.services.transfer import AFTER_TRANSFER, TRANSFER_STATUS, TRANSFERRED_TO
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.web.webhooks import SignedWebhooks, connect_twiml

TAKEN = {"completed", "answered"}
"""DialCallStatus values that mean the person took the call."""


def transfer_router(gate: CallGate, webhooks: SignedWebhooks, storage: CallStore | None) -> APIRouter:
    router = APIRouter()

    @router.post(TRANSFER_DONE_PATH)
    async def transfer_done(request: Request) -> Response:
        form = await webhooks.form(request)
        call_sid, status = form["CallSid"], form.get("DialCallStatus", "failed")
        destination, then = request.query_params.get("to", ""), request.query_params.get("then", "back")
        logger.info(f"call {call_sid}: transfer to {shown(destination)} ended: {shown(status)}")
        if storage is not None:
            try:
                await storage.update_call(call_sid, transfer_status=status.replace("-", "_"))
            except Exception as exc:  # the caller's next step matters more than the record
                logger.error(f"call {call_sid}: storing the transfer's status failed ({exc.__class__.__name__})")
        if status in TAKEN:
            response = VoiceResponse()
            response.hangup()
            return Response(str(response), media_type="application/xml")
        line = request.query_params.get("line", "")
        parameters = {"caller": form.get("From", ""), "callee": form.get("To", ""), "callSid": call_sid,
                      TRANSFERRED_TO: destination, TRANSFER_STATUS: status,
                      AFTER_TRANSFER: "voicemail" if then == "voicemail" else "back"}
        if request.query_params.get("direction") == "outbound":
            parameters["direction"] = "outbound"
        parameters.update(gate.stream_parameters(call_sid, parameters["caller"], parameters["callee"], line))
        return Response(connect_twiml(webhooks.stream_url(request), parameters), media_type="application/xml")

    return router
