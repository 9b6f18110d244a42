"""The AI briefs the person of a warm transfer (``brief: ai``) on the person's own call and media stream.

When the person answers, their call gets a stream of its own, running the line's
chain; its parameters mark it as a brief (:data:`TRANSFER_ROLE`). The AI stage then
takes other instructions (brief the colleague with the summary, ask whether they can
take the call), opens with the brief, and is offered only :data:`ACCEPT` and
:data:`DECLINE`. Keys work too: ``1`` accepts, ``2`` declines (``twilio.input`` hands
them to :meth:`~agent_voice_bridge.transports.call_control.CallControl.answer_transfer`
through ``CallInfo.on_key``). The decision goes to the call's control, which joins the
person to the caller or brings the caller back.
"""

from __future__ import annotations

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.services.llm_service import FunctionCallParams

from agent_voice_bridge.transports.call_info import CallInfo

TRANSFER_ROLE = "transferRole"
"""Stream <Parameter>: ``brief`` on the person's leg of a warm transfer."""
BRIEF = "brief"
ACCEPT = "accept_call"
DECLINE = "decline_call"
KEYS = {"1": True, "2": False}

INSTRUCTIONS = ("You are a phone assistant calling a colleague at {name} to hand over a caller who is waiting on "
                "hold. What you know: {summary} Brief them in one or two short sentences and ask whether they can "
                "take the call now. If they agree, call {accept}. If they cannot, call {decline}. Do not chat.")
OPENING = ("Hello, I have a caller on hold for {name}. {summary} Can you take the call now? Say yes or press 1, or "
           "say no or press 2.")


def briefing(call: CallInfo | None) -> bool:
    """Whether this call is the person's leg of a warm transfer, to be briefed."""
    return call is not None and call.parameters.get(TRANSFER_ROLE) == BRIEF


def _facts(call: CallInfo) -> dict[str, str]:
    return {"name": call.parameters.get("transferTo") or "the team",
            "summary": call.parameters.get("summary") or "A caller asked to be put through.",
            "accept": ACCEPT, "decline": DECLINE}


def brief_instructions(call: CallInfo) -> str:
    return INSTRUCTIONS.format(**_facts(call))


def brief_opening(call: CallInfo | None) -> str | None:
    return OPENING.format(**_facts(call)) if call is not None and briefing(call) else None


def brief_schemas() -> list[FunctionSchema]:
    return [FunctionSchema(name=ACCEPT, description="The colleague agreed to take the call: join them to the caller.",
                           properties={}, required=[]),
            FunctionSchema(name=DECLINE, description="The colleague cannot take the call: the caller goes back to "
                           "the assistant.", properties={}, required=[])]


def register_brief_tools(service, call: CallInfo) -> None:
    """The person's decision, by voice (the model's tools) or by key (1 / 2), goes to the call's control."""

    def decided(accepted: bool):
        async def handler(args: FunctionCallParams) -> None:
            await args.result_callback({"result": "Thank you." if accepted else "Understood."})
            if call.control is not None:
                await call.control.answer_transfer(accepted)
        return handler

    service.register_function(ACCEPT, decided(True))
    service.register_function(DECLINE, decided(False))

    async def on_key(digit: str) -> None:
        if digit in KEYS and call.control is not None:
            await call.control.answer_transfer(KEYS[digit])

    call.on_key = on_key
