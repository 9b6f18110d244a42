"""Twilio's REST API, for what the bridge asks of Twilio itself: placing a call, changing or hanging one up.

The ``twilio`` package does the HTTP (it is synchronous: callers run these in a
thread). ``twilio.api_base_url`` points it elsewhere (a proxy, or the fake Twilio
in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from loguru import logger
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from agent_voice_bridge.log_values import shown
from agent_voice_bridge.pipelines.config import TwilioConfig

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
TWILIO_TIMEOUT_SECS = 15.0
"""The twilio package waits forever by default: a Twilio that accepts and never answers held a request (and a thread)."""
DEFAULT_API = "https://api.twilio.com"


class OutboundError(RuntimeError):
    """A call could not be placed (configuration, or Twilio said no); the message says which."""


class TwilioRefused(OutboundError):
    """Twilio's API answered with an error (bad number, no funds, unverified caller ID…, or a 5xx of its own)."""


class TwilioUnreachable(OutboundError):
    """Twilio's API could not be reached (connection refused, DNS, TLS, no answer in time): try again later."""


def rest_client(twilio: TwilioConfig) -> Client:
    client = Client(twilio.account_sid, twilio.auth_token, http_client=TwilioHttpClient(timeout=TWILIO_TIMEOUT_SECS))
    if twilio.api_base_url:
        client.api.base_url = twilio.api_base_url.rstrip("/")
    return client


@dataclass(frozen=True)
class PlacedCall:
    call_sid: str
    status: str


def place_call(twilio: TwilioConfig, *, to: str, answer_url: str, status_url: str,
               machine_detection: bool | str, timeout: int | None = None) -> PlacedCall:
    """Ask Twilio to ring ``to`` from ``twilio.phone_number``; ``answer_url`` gets the answered call.
    ``machine_detection``: True for ``DetectMessageEnd`` (leave a message), or Twilio's mode by name
    (``Enable``: say who answered as soon as it knows); ``timeout``: seconds to ring (Twilio's default 60)."""
    from twilio.base.exceptions import TwilioException

    mode = "DetectMessageEnd" if machine_detection is True else machine_detection
    options: dict[str, object] = {"machine_detection": mode} if mode else {}
    if timeout is not None:
        options["timeout"] = timeout
    try:
        call = rest_client(twilio).calls.create(
            to=to, from_=twilio.phone_number, url=answer_url, method="POST", status_callback=status_url,
            status_callback_event=STATUS_EVENTS, status_callback_method="POST", **options)
    except TwilioException as exc:
        raise TwilioRefused(f"Twilio refused the call to {to}: {twilio_said(exc)}") from None
    except requests.RequestException as exc:
        raise TwilioUnreachable(f"could not reach Twilio's API at {api_host(twilio)}: {unreachable_why(exc)}") from None
    return PlacedCall(call_sid=call.sid, status=call.status or "queued")


def twilio_said(exc: Exception) -> str:
    """Twilio's error as one plain line (the package's own ``str`` adds terminal colours on a tty)."""
    if isinstance(exc, OutboundError):  # already one plain line (update_call, place_call)
        return shown(str(exc), 300)
    status = getattr(exc, "status", None)
    message = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", None) or ""
    code = getattr(exc, "code", None)
    text = f"HTTP {status}" if status else exc.__class__.__name__
    if message:
        text += f" {message}"
    if code and code != status:
        text += f" (error {code})"
    return shown(text, 300)


def api_host(twilio: TwilioConfig) -> str:
    """Where the API is, without any credentials a proxy URL might hold."""
    parts = urlsplit(twilio.api_base_url or DEFAULT_API)
    return shown(f"{parts.hostname}{f':{parts.port}' if parts.port else ''}")


def unreachable_why(exc: requests.RequestException) -> str:
    """The socket-level reason (``[Errno 111] Connection refused``), not urllib3's paragraph around it."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {TWILIO_TIMEOUT_SECS:g} s"
    reason = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the socket error
    return shown(str(reason).rpartition("): ")[2] or exc.__class__.__name__)


def send_text(twilio: TwilioConfig, to: str, body: str) -> None:
    """An SMS from ``twilio.phone_number`` (Twilio's Messages API); raises what the twilio package raises."""
    rest_client(twilio).messages.create(to=to, from_=twilio.phone_number, body=body)


def end_call(twilio: TwilioConfig, call_sid: str, status: str) -> None:
    """Cancel a ringing call (``canceled``) or hang up a live one (``completed``); raises as the twilio package does."""
    rest_client(twilio).calls(call_sid).update(status=status)


def complete_call(twilio: TwilioConfig, call_sid: str) -> None:
    """Hang up through Twilio's REST API, so the call ends even if TwiML follows <Connect>."""
    try:
        end_call(twilio, call_sid, "completed")
    except Exception as exc:  # closing the stream still ends the call
        logger.warning(f"call {call_sid}: REST hang-up failed ({exc.__class__.__name__}); closing the stream")


def update_call(twilio: TwilioConfig, call_sid: str, twiml: str) -> None:
    """Replace a live call's TwiML (its current verb, a ``<Connect><Stream>``, ends at once and the new verbs run:
    keys to press, a transfer, hold, back to the bridge); raises ``TwilioRefused`` / ``TwilioUnreachable``."""
    from twilio.base.exceptions import TwilioException

    try:
        rest_client(twilio).calls(call_sid).update(twiml=twiml)
    except TwilioException as exc:
        raise TwilioRefused(f"Twilio refused to update call {shown(call_sid)}: {twilio_said(exc)}") from None
    except requests.RequestException as exc:
        raise TwilioUnreachable(f"could not reach Twilio's API at {api_host(twilio)}: {unreachable_why(exc)}") from None
