"""Twilio's webhooks of a transfer the AI started (``services/transfer.py``), cold and warm.

``POST /transfer/done`` is the ``<Dial action>`` of the caller's call. Cold: the
person took the call (``DialCallStatus`` ``completed``/``answered``) and it is over, so
hang up; anything else (``no-answer``, ``busy``, ``failed``, ``canceled``) and the
caller must not be left on a dead line: the call connects a new media stream (signed
token, the same line) whose parameters say which transfer failed and how, so the AI
opens with that news, or the built-in voicemail takes a message. Warm: the caller's
conference ended: they hung up (the person's call is ended too), or the person left
after joining (the caller goes back to the AI).

Warm, the person's call: ``/transfer/person`` (answered; a machine ends it and brings
the caller back), ``/transfer/person/answer`` (their ``<Gather>``: 1 or yes joins them to
the caller, anything else brings the caller back), ``/transfer/person/status`` (it was
not answered, or they hung up while being briefed). ``/transfer/hold`` is the caller's
conference ``waitUrl``; ``/transfer/hold-audio`` the audio it loops.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from loguru import logger

from agent_voice_bridge.calls import transfer as twiml
from agent_voice_bridge.calls.warm_states import WAITING, WarmEvent, WarmState
from agent_voice_bridge.calls.warm_transfer import BACK_STATUS, WarmTransfers
from agent_voice_bridge.chain_source import ChainSource
from agent_voice_bridge.log_values import shown
from agent_voice_bridge.security import CallGate
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.twiml import connect_twiml
from agent_voice_bridge.web.webhooks import SignedWebhooks

TAKEN = {"completed", "answered"}
"""DialCallStatus values that mean the person took the call."""
NOT_ANSWERED = {"no-answer", "busy", "failed", "canceled"}
YES = {"yes", "yeah", "yep", "sure", "ok", "okay"}


def xml(text: str) -> Response:
    return Response(text, media_type="application/xml")


def accepted(form: dict[str, str]) -> bool:
    """The person pressed 1 or said yes (Twilio's ``Digits``, or its transcript ``SpeechResult``)."""
    if form.get("Digits"):
        return form["Digits"] == "1"
    words = {w.strip(".,!?") for w in form.get("SpeechResult", "").lower().split()}
    return bool(words & YES) and "no" not in words


def hold_audio_of(chains: ChainSource, line: str, destination: str) -> Path | None:
    """The destination's own ``hold_audio``, if its line's AI stage names one."""
    found = chains.line_named(line)
    for stage in found.chain.stages if found is not None else []:
        configured = getattr(stage.params, "transfer", {}).get(destination)
        if configured is not None and configured.hold_audio:
            return Path(configured.hold_audio)
    return None


def transfer_router(gate: CallGate, webhooks: SignedWebhooks, storage: CallStore | None, chains: ChainSource,
                    transfers: WarmTransfers) -> APIRouter:
    router = APIRouter()

    async def record(call_sid: str, status: str) -> None:
        if storage is None:
            return
        try:
            await storage.update_call(call_sid, transfer_status=status.replace("-", "_"))
        except Exception as exc:  # the caller's next step matters more than the record
            logger.error(f"call {call_sid}: storing the transfer's status failed ({exc.__class__.__name__})")

    @router.post(twiml.TRANSFER_DONE_PATH)
    async def transfer_done(request: Request) -> Response:
        form = await webhooks.form(request)
        call_sid, status = form["CallSid"], form.get("DialCallStatus", "failed")
        facts = dict(request.query_params)
        logger.info(f"call {call_sid}: transfer to {shown(facts.get('to'))}: dial ended {shown(status)}")
        caller, callee = form.get("From", ""), form.get("To", "")
        if "person" in facts:  # warm: the caller's conference ended
            if form.get("CallStatus") == "completed":  # the caller hung up
                before, _ = await transfers.move(call_sid, WarmEvent.CALLER_LEFT)
                if before in WAITING:
                    await transfers.end_person(facts["person"], before)
                return xml(twiml.goodbye_twiml())
            before, _ = await transfers.move(call_sid, WarmEvent.PERSON_LEFT)  # whatever the state: never a dead line
            if before in WAITING:
                await transfers.end_person(facts["person"], before)
            return xml(connect_twiml(webhooks.stream_url(request),
                                     twiml.back_parameters(gate, call_sid, caller, callee, facts, "left")))
        await record(call_sid, status)
        if status in TAKEN:
            return xml(twiml.goodbye_twiml())
        return xml(connect_twiml(webhooks.stream_url(request),
                                 twiml.back_parameters(gate, call_sid, caller, callee, facts, status)))

    @router.post(twiml.HOLD_PATH)
    async def hold(request: Request) -> Response:
        await webhooks.form(request)
        query = {k: request.query_params.get(k, "") for k in ("to", "line")}
        return xml(twiml.hold_audio_twiml(twiml.url(webhooks.base_url(request), twiml.HOLD_AUDIO_PATH, query)))

    @router.get(twiml.HOLD_AUDIO_PATH)
    async def hold_audio(request: Request) -> Response:
        own = hold_audio_of(chains, request.query_params.get("line", ""), request.query_params.get("to", ""))
        if own is not None:
            return FileResponse(own)
        built_in = resources.files("agent_voice_bridge.assets").joinpath("hold_music.wav").read_bytes()
        return Response(built_in, media_type="audio/wav")

    async def back(request: Request, call_sid: str, status: str) -> None:
        facts = dict(request.query_params)
        await transfers.bring_back(call_sid, facts.get("caller", ""), facts.get("callee", ""), facts, status,
                                   webhooks.base_url(request))

    @router.post(twiml.PERSON_PATH)
    async def person_answered(request: Request) -> Response:
        form = await webhooks.form(request)
        call_sid, answered_by = request.query_params.get("call", ""), form.get("AnsweredBy", "human")
        machine = answered_by.startswith("machine") or answered_by == "fax"
        event = WarmEvent.MACHINE_ANSWERED if machine else WarmEvent.HUMAN_ANSWERED
        _, after = await transfers.move(call_sid, event)
        if after == WarmState.BRIEFING and request.query_params.get("brief") == "ai":  # the AI briefs them
            parameters = transfers.brief_parameters(form["CallSid"], form.get("From", ""), form.get("To", ""),
                                                    dict(request.query_params))
            return xml(connect_twiml(webhooks.stream_url(request), parameters))
        if after == WarmState.BRIEFING:
            action = twiml.url(webhooks.base_url(request), twiml.PERSON_ANSWER_PATH, dict(request.query_params))
            brief_secs = int(request.query_params.get("brief_secs", "15") or 15)
            return xml(twiml.brief_twiml(request.query_params.get("summary", ""), brief_secs, action))
        if after == WarmState.BACK:
            await back(request, call_sid, BACK_STATUS[event])
        return xml(twiml.goodbye_twiml())  # a machine, or the caller is no longer waiting

    @router.post(twiml.PERSON_ANSWER_PATH)
    async def person_decided(request: Request) -> Response:
        form = await webhooks.form(request)
        call_sid = request.query_params.get("call", "")
        event = WarmEvent.ACCEPTED if accepted(form) else WarmEvent.DECLINED
        _, after = await transfers.move(call_sid, event)
        if after == WarmState.JOINED:
            return xml(twiml.join_twiml(call_sid))
        if after == WarmState.BACK:
            await back(request, call_sid, BACK_STATUS[event])
            return xml(twiml.goodbye_twiml("Thank you. Goodbye."))
        return xml(twiml.goodbye_twiml("Sorry, the caller is no longer waiting. Goodbye."))

    @router.post(twiml.PERSON_STATUS_PATH)
    async def person_status(request: Request) -> Response:
        form = await webhooks.form(request)
        call_sid, status = request.query_params.get("call", ""), form.get("CallStatus", "")
        if (status in NOT_ANSWERED or status == "completed") and await transfers.state(call_sid) in WAITING:
            # Not answered, or hung up while being briefed (after joining, the caller's conference reports it)
            event = WarmEvent.NOT_ANSWERED if status in NOT_ANSWERED else WarmEvent.PERSON_LEFT
            _, after = await transfers.move(call_sid, event)
            if after == WarmState.BACK:
                await back(request, call_sid, status if status in NOT_ANSWERED else BACK_STATUS[WarmEvent.DECLINED])
        return Response(status_code=204)

    return router
