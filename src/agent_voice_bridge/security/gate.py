"""The checks every webhook and media stream pass through, in one place.

``/incoming``: Twilio's signature (403 if wrong), then the caller policy
(blocklist/allowlist → ``<Reject>``, no charge), then the limits (per-caller rate,
concurrent calls → a short ``<Say>`` and ``<Hangup/>``). The TwiML it answers
carries a one-time stream token. ``/media-stream``: the handshake signature when
configured, then the token on ``start`` before anything is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from loguru import logger
from twilio.twiml.voice_response import VoiceResponse

from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.phone_numbers import e164
from agent_voice_bridge.security.limits import LimitStore, MemoryLimitStore, caller_key
from agent_voice_bridge.security.mode import checks_on, security_mode
from agent_voice_bridge.security.policy import CallerPolicy
from agent_voice_bridge.security.signatures import SignatureChecker
from agent_voice_bridge.security.stream_tokens import PARAMETER, StreamTokens
from agent_voice_bridge.sids import is_call_sid
from agent_voice_bridge.transports.twilio_protocol import Start

BUSY_MESSAGE = "Sorry, this line is busy right now. Please try again later. Goodbye."
LINE_PARAMETER = "line"
"""The stream ``<Parameter>`` naming the line ``/incoming`` (or ``/outbound``) chose; the token binds it."""
PENDING_CALL_SECONDS = 60.0
"""A call admitted by /incoming holds its slot this long until its stream starts."""


@dataclass
class Refusal:
    """Why a call was refused, and the TwiML that tells Twilio."""

    reason: str
    twiml: str
    kind: str = "policy"
    """Short label for metrics: not_allowed, rate_limited, busy."""


def _reject() -> str:
    response = VoiceResponse()
    response.reject()
    return str(response)


def _busy() -> str:
    response = VoiceResponse()
    response.say(BUSY_MESSAGE)
    response.hangup()
    return str(response)


def no_line(number: str) -> Refusal:
    """A call to a number no line takes (a server file without ``default:``): rejected, no charge."""
    return Refusal(f"no line takes calls to {number or 'this number'} (add it, or a default, to lines:)",
                   _reject(), "no_line")


def normalise_number(number: str) -> str:
    """E.164 for a phone number ("+1 (555) 010-0100" → "+15550100100"); "" for anything else (SIP, client, withheld)."""
    return e164(number) or ""


class CallGate:
    def __init__(self, config: BridgeConfig, store: LimitStore | None = None):
        security, token = config.security, config.twilio.auth_token
        self.enforce = checks_on(config)
        self.mode = security_mode(config)
        self.check_ws = self.enforce and security.check_ws_signature
        self._signatures = SignatureChecker(token) if token else None
        self._tokens = StreamTokens(token, security.stream_token_seconds) if token else None
        self.policy = CallerPolicy.of(security)
        """The server's own rules, for a call that has no line's (a line's come with it: ``admit(form, policy)``)."""
        self._max_calls = security.max_concurrent_calls
        self.store = store or MemoryLimitStore()

    def signature_ok(self, url: str, params: Mapping[str, str], signature: str | None) -> bool:
        if not self.enforce:
            return True
        assert self._signatures is not None
        return self._signatures.valid(url, params, signature)

    async def admit(self, form: Mapping[str, str], policy: CallerPolicy | None = None) -> Refusal | None:
        """Whether ``/incoming`` may take this call, under ``policy`` (the line's; default the server's)."""
        policy = policy or self.policy
        caller = normalise_number(form.get("From", ""))
        if caller in policy.blocklist:
            return Refusal("caller is on the blocklist", _reject(), "not_allowed")
        if policy.allowlist and caller not in policy.allowlist:
            return Refusal("caller is not on the allowlist", _reject(), "not_allowed")
        identity = caller or form.get("From", "")[:128]  # a SIP or client identity is limited as itself
        rate = policy.rate_limit
        if rate and not await self.store.hit(caller_key(identity, policy.rate_scope), rate.calls, rate.per_seconds):
            return Refusal(f"rate limit: {rate.calls} calls per {rate.per_seconds:g} s", _busy(), "rate_limited")
        call_sid = form.get("CallSid", "")
        if self._max_calls and not await self.store.claim_call(call_sid, self._max_calls, PENDING_CALL_SECONDS):
            return Refusal(f"{self._max_calls} concurrent calls already", _busy(), "busy")
        return None

    def stream_parameters(self, call_sid: str, caller: str = "", callee: str = "", line: str = "") -> dict[str, str]:
        """Extra ``<Parameter>``s for the TwiML: the line the call was given and, when checks are on, the
        one-time stream token.

        ``caller`` and ``callee`` must be the ``caller``/``callee`` parameters the same TwiML carries
        (absent = ""): the token is bound to them and to ``line``, and :meth:`check_stream` refuses a
        stream that presents other ones.
        """
        parameters = {LINE_PARAMETER: line} if line else {}
        if not self.enforce or not call_sid:
            return parameters
        assert self._tokens is not None
        return {**parameters, PARAMETER: self._tokens.issue(call_sid, caller, callee, line)}

    async def check_stream(self, start: Start, max_call_seconds: float | None = None) -> str | None:
        """A reason to close the stream with 1008, or None to let the call in. ``max_call_seconds``: the
        call's line's limit (default the server's), for as long as the call holds its slot."""
        if not is_call_sid(start.call_sid or start.custom_parameters.get("callSid")):
            return "callSid is missing or not a Twilio call SID"
        if self.enforce:
            assert self._tokens is not None
            params = start.custom_parameters
            token = params.get(PARAMETER)
            problem = self._tokens.check(start.call_sid, token, params.get("caller", ""), params.get("callee", ""),
                                         params.get(LINE_PARAMETER, ""))
            if problem:
                return problem
            assert token is not None
            if not await self.store.use_once(token, self._tokens.expires_at(token)):
                return "stream token already used"
        if self._max_calls and not await self.store.claim_call(start.call_sid, self._max_calls,
                                                               (max_call_seconds or self.policy.max_call_seconds)
                                                               + PENDING_CALL_SECONDS):
            return f"{self._max_calls} concurrent calls already"
        return None

    async def call_ended(self, call_sid: str) -> None:
        if self._max_calls:
            try:
                await self.store.release_call(call_sid)
            except Exception as exc:  # the slot expires on its own; never fail a hang-up over it
                logger.warning(f"call {call_sid}: could not release its slot ({exc.__class__.__name__})")
