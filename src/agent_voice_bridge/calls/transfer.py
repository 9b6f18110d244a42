"""Transfers on Twilio's side: the TwiML of each step, and the parameters a caller comes back to the AI with.

Cold: the live call is redirected (REST ``calls(sid).update(twiml=…)``) to TwiML that
may speak the destination's ``say`` line and then ``<Dial>``s the number with the
caller ID and ring timeout configured. ``<Dial action>`` is :data:`TRANSFER_DONE_PATH`:
Twilio posts there when the dial ends (``DialCallStatus``), and that webhook
(``web/transfer.py``) hangs up after a call the person took, or brings the caller back
to the AI (or voicemail) as a new stream of the same call. Warm: the caller is
redirected into a ``<Conference>`` named after their call, hearing hold audio
(``waitUrl``) until the person, rung and briefed on a call of their own, accepts and
joins it (``calls/warm_transfer.py``). The URLs carry what the webhooks need to know
(Twilio signs them whole), so any worker can answer them.
"""

from __future__ import annotations

from urllib.parse import urlencode

from twilio.twiml.voice_response import Conference, Dial, Gather, VoiceResponse

from agent_voice_bridge.security import CallGate
from agent_voice_bridge.services.transfer import AFTER_TRANSFER, TRANSFER_STATUS, TRANSFERRED_TO
from agent_voice_bridge.transports.call_control import TransferRequest
from agent_voice_bridge.transports.call_info import CallInfo

TRANSFER_DONE_PATH = "/transfer/done"
HOLD_PATH = "/transfer/hold"
HOLD_AUDIO_PATH = "/transfer/hold-audio"
PERSON_PATH = "/transfer/person"
PERSON_ANSWER_PATH = "/transfer/person/answer"
PERSON_STATUS_PATH = "/transfer/person/status"


def call_facts(request: TransferRequest, info: CallInfo) -> dict[str, str]:
    """What every webhook of this transfer needs: the destination, what follows no answer, the call's line."""
    facts = {"to": request.destination, "then": request.on_no_answer, "line": info.line}
    if info.direction == "outbound":
        facts["direction"] = "outbound"
    return facts


def url(base: str, path: str, query: dict[str, str]) -> str:
    return f"{base.rstrip('/')}{path}?{urlencode(query)}"


def done_url(base: str, request: TransferRequest, info: CallInfo) -> str:
    """The ``<Dial action>`` of the caller's call."""
    return url(base, TRANSFER_DONE_PATH, call_facts(request, info))


def dial_twiml(request: TransferRequest, action: str) -> str:
    """Cold: say the line (if configured), then dial the person."""
    response = VoiceResponse()
    if request.say:
        response.say(request.say)
    dial = Dial(action=action, method="POST", timeout=request.timeout_secs,
                **({"caller_id": request.caller_id} if request.caller_id else {}))
    dial.number(request.number)
    response.append(dial)
    return str(response)


def hold_twiml(request: TransferRequest, conference: str, action: str, hold_url: str) -> str:
    """Warm, the caller: say the line (if configured), then wait in the conference, hearing hold audio."""
    response = VoiceResponse()
    if request.say:
        response.say(request.say)
    dial = Dial(action=action, method="POST")
    dial.conference(conference, beep=False, start_conference_on_enter=False, end_conference_on_exit=True,
                    wait_url=hold_url, wait_method="POST")
    response.append(dial)
    return str(response)


def hold_audio_twiml(audio_url: str) -> str:
    """The conference's ``waitUrl``: the hold audio, looped until the person joins or the caller is moved."""
    response = VoiceResponse()
    response.play(audio_url, loop=0)
    return str(response)


def brief_twiml(summary: str, brief_secs: int, action: str) -> str:
    """Warm, the person: the AI's brief, then accept (1, yes) or not; no input within ``brief_secs`` declines."""
    response = VoiceResponse()
    gather = Gather(action=action, method="POST", input="dtmf speech", num_digits=1, timeout=brief_secs,
                    hints="yes, no", action_on_empty_result=True)
    gather.say(f"{summary} Press 1 or say yes to take the call. Press 2 or say no if you cannot.")
    response.append(gather)
    response.redirect(action, method="POST")  # Twilio gave up waiting: no input is a no
    return str(response)


def join_twiml(conference: str) -> str:
    """Warm, the person accepted: into the caller's conference; when they leave, it ends."""
    response = VoiceResponse()
    dial = Dial()
    dial.append(Conference(conference, beep=False, start_conference_on_enter=True, end_conference_on_exit=True))
    response.append(dial)
    return str(response)


def goodbye_twiml(say: str | None = None) -> str:
    response = VoiceResponse()
    if say:
        response.say(say)
    response.hangup()
    return str(response)


def back_parameters(gate: CallGate, call_sid: str, caller: str, callee: str, facts: dict[str, str],
                    status: str) -> dict[str, str]:
    """The stream <Parameter>s of a caller coming back from a transfer nobody took (``status`` says how)."""
    parameters = {"caller": caller, "callee": callee, "callSid": call_sid, TRANSFERRED_TO: facts.get("to", ""),
                  TRANSFER_STATUS: status, AFTER_TRANSFER: "voicemail" if facts.get("then") == "voicemail" else "back"}
    if facts.get("direction") == "outbound":
        parameters["direction"] = "outbound"
    return {**parameters, **gate.stream_parameters(call_sid, caller, callee, facts.get("line", ""))}
