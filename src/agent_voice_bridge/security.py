"""Who may use the bridge: the checks every webhook and media stream pass through.

The server calls :meth:`CallGate.check_incoming` before answering ``/incoming`` and
:meth:`CallGate.check_stream` before building a call's pipeline; everything that
decides whether Twilio (and which caller) gets in lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

from twilio.twiml.voice_response import VoiceResponse

from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.transports.twilio_protocol import Start


@dataclass
class Refusal:
    """Why a call was refused, and the TwiML that tells Twilio."""

    reason: str
    twiml: str


class CallGate:
    def __init__(self, config: BridgeConfig):
        self._allowlist = {_normalise(n) for n in config.security.allowlist}

    async def check_incoming(self, form: dict[str, str]) -> Refusal | None:
        caller = _normalise(form.get("From", ""))
        if self._allowlist and caller not in self._allowlist:
            response = VoiceResponse()
            response.reject()
            return Refusal("caller not on the allowlist", str(response))
        return None

    async def check_stream(self, start: Start) -> str | None:
        """A reason to close the stream with 1008, or None to let the call in."""
        return None


def _normalise(number: str) -> str:
    digits = "".join(ch for ch in number if ch.isdigit())
    return f"+{digits}" if digits else ""
