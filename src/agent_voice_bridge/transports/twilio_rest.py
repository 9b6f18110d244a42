"""Twilio's REST API, for what the bridge asks of Twilio itself: placing a call and hanging one up.

The ``twilio`` package does the HTTP (it is synchronous: callers run these in a
thread). ``twilio.api_base_url`` points it elsewhere (a proxy, or the fake Twilio
in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger
from twilio.rest import Client

from agent_voice_bridge.pipelines.config import TwilioConfig

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]


class OutboundError(RuntimeError):
    """A call could not be placed (configuration, or Twilio said no); the message says which."""


class TwilioRefused(OutboundError):
    """Twilio's API answered with an error (bad number, no funds, unverified caller ID…)."""


def rest_client(twilio: TwilioConfig) -> Client:
    client = Client(twilio.account_sid, twilio.auth_token)
    if twilio.api_base_url:
        client.api.base_url = twilio.api_base_url.rstrip("/")
    return client


@dataclass(frozen=True)
class PlacedCall:
    call_sid: str
    status: str


def place_call(twilio: TwilioConfig, *, to: str, answer_url: str, status_url: str,
               machine_detection: bool) -> PlacedCall:
    """Ask Twilio to ring ``to`` from ``twilio.phone_number``; ``answer_url`` gets the answered call."""
    from twilio.base.exceptions import TwilioException

    options = {"machine_detection": "DetectMessageEnd"} if machine_detection else {}
    try:
        call = rest_client(twilio).calls.create(
            to=to, from_=twilio.phone_number, url=answer_url, method="POST", status_callback=status_url,
            status_callback_event=STATUS_EVENTS, status_callback_method="POST", **options)
    except TwilioException as exc:
        raise TwilioRefused(f"Twilio refused the call to {to}: {exc}") from None
    return PlacedCall(call_sid=call.sid, status=call.status or "queued")


def send_text(twilio: TwilioConfig, to: str, body: str) -> None:
    """An SMS from ``twilio.phone_number`` (Twilio's Messages API); raises what the twilio package raises."""
    rest_client(twilio).messages.create(to=to, from_=twilio.phone_number, body=body)


def complete_call(twilio: TwilioConfig, call_sid: str) -> None:
    """Hang up through Twilio's REST API, so the call ends even if TwiML follows <Connect>."""
    try:
        rest_client(twilio).calls(call_sid).update(status="completed")
    except Exception as exc:  # closing the stream still ends the call
        logger.warning(f"call {call_sid}: REST hang-up failed ({exc.__class__.__name__}); closing the stream")
