"""Cold transfer on Twilio's side: the TwiML that dials the person, and where Twilio reports how it went.

The live call is redirected (REST ``calls(sid).update(twiml=…)``) to TwiML that may
speak the destination's ``say`` line and then ``<Dial>``s the number with the caller
ID and ring timeout configured. ``<Dial action>`` is :data:`TRANSFER_DONE_PATH`:
Twilio posts there when the dial ends (``DialCallStatus``), and that webhook
(``web/transfer.py``) hangs up after a call the person took, or brings the caller
back to the AI (or voicemail) as a new stream of the same call. The URL carries what
the webhook needs to know (Twilio signs it whole).
"""

from __future__ import annotations

from urllib.parse import urlencode

from twilio.twiml.voice_response import Dial, VoiceResponse

from agent_voice_bridge.transports.call_control import TransferRequest
from agent_voice_bridge.transports.call_info import CallInfo

TRANSFER_DONE_PATH = "/transfer/done"


def done_url(base: str, request: TransferRequest, info: CallInfo) -> str:
    """The ``<Dial action>``: the destination, what follows no answer, and the call's line and direction."""
    query = {"to": request.destination, "then": request.on_no_answer, "line": info.line}
    if info.direction == "outbound":
        query["direction"] = "outbound"
    return f"{base.rstrip('/')}{TRANSFER_DONE_PATH}?{urlencode(query)}"


def dial_twiml(request: TransferRequest, action: str) -> str:
    response = VoiceResponse()
    if request.say:
        response.say(request.say)
    dial = Dial(action=action, method="POST", timeout=request.timeout_secs,
                **({"caller_id": request.caller_id} if request.caller_id else {}))
    dial.number(request.number)
    response.append(dial)
    return str(response)
