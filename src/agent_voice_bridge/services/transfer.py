"""The built-in ``transfer`` tool: the AI puts the caller through to a person.

A stage names its destinations::

    - gemini.live:
        tools: [transfer]
        transfer:
          billing: {number: "+15550188", say: "Connecting you to billing now."}
          sales:   {number: "+15550199"}

and the model is offered ``transfer(to, reason)`` with ``to`` limited to those names.
The handler answers the model at once (so it says its line, unless ``say`` speaks one
for it) and asks the call's :class:`~agent_voice_bridge.transports.call_control.CallControl`
to redirect the call once that line has played. When nobody answers, the call comes
back to the AI as a new stream of the same call whose parameters say so
(:func:`back_from_transfer`), and the model opens with that news.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.services.llm_service import FunctionCallParams
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent_voice_bridge.phone_numbers import e164
from agent_voice_bridge.services.tools import TRANSFER
from agent_voice_bridge.transports.call_control import AfterNoAnswer, TransferRequest
from agent_voice_bridge.transports.call_info import CallInfo

MAX_SUMMARY_CHARS = 400
"""A warm transfer's brief rides in a signed webhook URL and is spoken to a person waiting to decide: short."""
DESTINATION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
TRANSFERRED_TO = "transferTo"
"""Stream <Parameter> of a call back from a transfer: the destination's name."""
TRANSFER_STATUS = "transferStatus"
"""Stream <Parameter> of a call back from a transfer: how the dial ended (Twilio's DialCallStatus)."""
AFTER_TRANSFER = "afterTransfer"
"""Stream <Parameter> of a call back from a transfer: ``back`` (to the AI) or ``voicemail``."""

_NEWS = {
    "busy": "Sorry, {name} is busy right now.",
    "no-answer": "Sorry, nobody at {name} answered.",
    "declined": "Sorry, {name} can't take the call right now.",
    "machine": "Sorry, I only reached an answering machine at {name}.",
    "left": "{name} has left the call.",
}
_NEWS_OTHERWISE = "Sorry, I could not put you through to {name}."


def _number(value: str | None, key: str) -> str | None:
    if value is None:
        return None
    number = e164(value)
    if number is None:
        raise ValueError(f"{key} {value!r} is not a phone number in E.164 (e.g. +15550188)")
    return number


class TransferDestination(BaseModel):
    """One person or team the AI may put the caller through to."""

    model_config = ConfigDict(extra="forbid")
    number: str = Field(description="The number to dial, E.164.")
    say: str | None = Field(default=None, description="What the caller hears before the dial (spoken by Twilio); "
                            "unset: the AI says its own line.")
    caller_id: str | None = Field(default=None, description="The caller ID the person sees (a number of your Twilio "
                                  "account); unset: the caller's own number.")
    timeout_secs: int = Field(default=30, ge=5, le=600, description="How long it rings before it counts as "
                              "unanswered.")
    on_no_answer: AfterNoAnswer = Field(default="back", description="Unanswered, busy or failed: 'back' to the AI, "
                                        "which tells the caller, or 'voicemail'.")
    description: str | None = Field(default=None, description="Who this is, for the model (e.g. 'invoices and "
                                    "refunds').")
    warm: bool = Field(default=False, description="Warm transfer: the caller waits on hold while the person is rung, "
                       "briefed with the AI's summary, and asked to accept (press 1 or say yes).")
    brief_timeout_secs: int = Field(default=15, ge=3, le=120, description="Warm: how long the person has to accept "
                                    "once briefed.")
    brief: Literal["say", "ai"] = Field(default="say", description="Warm: 'say': Twilio reads the person the AI's "
                                        "summary and hears 1 / yes; 'ai': the AI briefs them on a media stream of "
                                        "their call and hears yes or no (or 1 / 2).")
    hold_audio: str | None = Field(default=None, description="Warm: a WAV or MP3 the caller hears on hold, looped "
                                   "(unset: the built-in hold music).")

    @field_validator("hold_audio")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"hold_audio {value!r}: no such file")
        return value

    @field_validator("number")
    @classmethod
    def _e164(cls, value: str) -> str:
        return _number(value, "number") or value

    @field_validator("caller_id")
    @classmethod
    def _caller_id(cls, value: str | None) -> str | None:
        return _number(value, "caller_id")


def check_destinations(destinations: dict[str, TransferDestination]) -> dict[str, TransferDestination]:
    for name in destinations:
        if not DESTINATION_NAME.match(name):
            raise ValueError(f"transfer destination {name!r}: a name of letters, digits, _ and - (e.g. billing)")
    return destinations


def transfer_schema(destinations: dict[str, TransferDestination]) -> FunctionSchema:
    who = "; ".join(f"{name}: {d.description}" for name, d in destinations.items() if d.description)
    return FunctionSchema(
        name=TRANSFER,
        description="Put the caller through to a person. First tell the caller in one short sentence that you are "
        "connecting them (unless the result says they hear a line already); the call is handed over once they "
        f"have heard it, and you leave the call.{f' Destinations: {who}.' if who else ''}",
        properties={"to": {"type": "string", "enum": list(destinations), "description": "Who to put them through to."},
                    "reason": {"type": "string", "description": "Why, in a few words (kept with the call's record)."},
                    **({"summary": {"type": "string", "description": "For the person, before they take the call: "
                                    "who is calling and what they need, in one or two spoken sentences."}}
                       if any(d.warm for d in destinations.values()) else {})},
        required=["to"],
    )


def transfer_handler(destinations: dict[str, TransferDestination], call: CallInfo | None):
    """The pipecat handler for ``transfer``: answer the model, then have the call redirected."""

    async def transfer(args: FunctionCallParams) -> None:
        name = str(args.arguments.get("to") or "")
        destination = destinations.get(name)
        if destination is None:
            await args.result_callback({"error": f"no destination {name!r}; choose one of {', '.join(destinations)}"})
            return
        control = call.control if call is not None else None
        if control is None or not control.can_transfer:
            await args.result_callback({"error": "This line cannot transfer calls. Tell the caller, and help them "
                                                 "yourself or take a message."})
            return
        reason = str(args.arguments.get("reason") or f"the caller asked for {name}")
        said = (f"The caller now hears: \"{destination.say}\". Say nothing more." if destination.say
                else "Say your one short line now; the caller is put through once they have heard it.")
        if destination.warm:
            said += " They wait on hold while the person is asked; if the person cannot take it, they come back to you."
        await args.result_callback({"result": f"Transferring to {name}. {said}"})
        summary = str(args.arguments.get("summary") or f"A caller needs {name}: {reason}.")
        request = TransferRequest(destination=name, number=destination.number, reason=reason, say=destination.say,
                                  caller_id=destination.caller_id, timeout_secs=destination.timeout_secs,
                                  on_no_answer=destination.on_no_answer, warm=destination.warm,
                                  summary=summary[:MAX_SUMMARY_CHARS], brief_secs=destination.brief_timeout_secs,
                                  brief=destination.brief)
        await control.transfer(request)

    return transfer


def back_from_transfer(call: CallInfo | None) -> str | None:
    """What the AI opens with when the caller is back from a transfer nobody took (None on any other call)."""
    if call is None or not call.parameters.get(TRANSFER_STATUS):
        return None
    name = call.parameters.get(TRANSFERRED_TO) or "them"
    news = _NEWS.get(call.parameters[TRANSFER_STATUS], _NEWS_OTHERWISE).format(name=name)
    return f"{news} I'm still here with you: how else can I help?"
