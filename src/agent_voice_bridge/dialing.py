"""Placing an outbound call: the request Twilio gets, and the record the call starts with.

Twilio rings the callee and, once answered (and, with answering-machine detection,
once it knows who answered), POSTs ``/outbound`` with the parameters in its query
string. Twilio signs the whole URL, so the parameters arrive as sent and become
the stream's ``<Parameter>``s: ``instructions`` can say why we are calling.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone
from urllib.parse import urlencode

from loguru import logger

from agent_voice_bridge.pipelines.config import BridgeConfig
from agent_voice_bridge.security.gate import normalise_number
from agent_voice_bridge.storage import CallRecord, CallStore
from agent_voice_bridge.transports.twilio_rest import OutboundError, PlacedCall, place_call

ANSWER_PATH = "/outbound"
STATUS_PATH = "/status"
RESERVED = {"caller", "callee", "callSid", "streamToken", "direction", "answeredBy", "line"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_VALUE_CHARS = 500


def check_parameters(parameters: dict[str, str]) -> dict[str, str]:
    for name, value in parameters.items():
        if not _NAME.match(name) or name in RESERVED:
            raise OutboundError(f"parameter name {name!r}: use letters, digits and _, and none of "
                                f"{', '.join(sorted(RESERVED))}")
        if len(value) > MAX_VALUE_CHARS:
            raise OutboundError(f"parameter {name}: longer than {MAX_VALUE_CHARS} characters")
    return parameters


def dial_problem(config: BridgeConfig) -> str | None:
    """What is missing from the configuration for outbound calls, in the user's terms."""
    missing = [key for key, value in (("twilio.account_sid", config.twilio.account_sid),
                                      ("twilio.auth_token", config.twilio.auth_token),
                                      ("twilio.phone_number", config.twilio.phone_number),
                                      ("server.public_url", config.server.public_url)) if not value]
    return f"outbound calls need {', '.join(missing)}" if missing else None


async def dial(config: BridgeConfig, storage: CallStore | None, to: str, parameters: dict[str, str],
               pipeline: str, line: str = "", from_number: str | None = None) -> PlacedCall:
    """Place the call (Twilio REST, in a thread) from ``from_number`` (default ``twilio.phone_number``) and
    start its record; raises :class:`OutboundError`. ``line`` rides in the (signed) answer URL, so
    ``/outbound`` gives the answered call that line's chain."""
    problem = dial_problem(config)
    if problem:
        raise OutboundError(problem)
    number = normalise_number(to)
    if len(number) < 8:
        raise OutboundError(f"{to!r} is not a phone number (E.164, e.g. +15551234567)")
    check_parameters(parameters)
    base = config.server.public_url
    sent = {**parameters, **({"line": line} if line else {})}
    query = f"?{urlencode(sent)}" if sent else ""
    twilio = config.twilio.model_copy(update={"phone_number": from_number}) if from_number else config.twilio
    placed = await asyncio.to_thread(place_call, twilio, to=number, answer_url=f"{base}{ANSWER_PATH}{query}",
                                     status_url=f"{base}{STATUS_PATH}",
                                     machine_detection=config.outbound.machine_detection)
    if storage is not None:
        try:
            await storage.start_call(CallRecord(
                call_sid=placed.call_sid, started_at=datetime.now(timezone.utc), caller=twilio.phone_number,
                callee=number, direction="outbound", pipeline=pipeline, line=line, status=placed.status,
                parameters=parameters))
        except Exception as exc:  # the call is ringing already: a failing database must not turn that into an error
            logger.error(f"call {placed.call_sid}: storing its record failed ({exc.__class__.__name__}: {exc})")
    return placed
