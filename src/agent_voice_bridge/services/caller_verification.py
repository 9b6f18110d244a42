"""Memory across calls only for a caller who proved the number is theirs: a code sent by text message.

Caller ID is the far end's claim and anyone can spoof it, so with ``memory: {verify: sms}`` the earlier calls
are not in the instructions at all. The model is told they exist and gets two tools: one texts a one-time code to
the number on file (only its real holder receives it), the other takes the code the caller reads back and, if it
matches, answers with the earlier calls. Three wrong codes, or ten minutes, close them for the rest of the call.
"""

from __future__ import annotations

import secrets
import time
from typing import Literal

from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.services.llm_service import FunctionCallParams

from agent_voice_bridge.transports.call_info import CallInfo

SEND_CODE = "send_verification_code"
RECALL = "recall_earlier_calls"
CODE_DIGITS = 6
CODE_SECONDS = 600.0
MAX_ATTEMPTS = 3

Verify = Literal["none", "sms"]

INSTRUCTION = (
    "This caller has called before, but their number is only a claim. If remembering earlier calls would help, "
    f"offer to text a code to their phone: call {SEND_CODE}, ask them to read the code back, then call {RECALL} "
    "with it. Never guess or reveal anything about earlier calls before the code is confirmed.")


def schemas() -> list[FunctionSchema]:
    return [
        FunctionSchema(name=SEND_CODE, description="Text a one-time code to the caller's phone number, to confirm "
                       "the number is theirs before earlier calls are recalled.", properties={}, required=[]),
        FunctionSchema(name=RECALL, description="Recall the caller's earlier calls, given the code they read "
                       "back from the text message.",
                       properties={"code": {"type": "string", "description": "The digits the caller read back."}},
                       required=["code"]),
    ]


class CallerVerification:
    """One call's code: issued once per request, compared in constant time, a few attempts, then closed."""

    def __init__(self, call: CallInfo) -> None:
        self._call = call
        self._code: str | None = None
        self._issued_at = 0.0
        self._attempts = 0

    async def send_code(self, params: FunctionCallParams) -> None:
        await params.result_callback({"result": await self._send()})

    async def recall(self, params: FunctionCallParams) -> None:
        await params.result_callback({"result": self._check(str(params.arguments.get("code") or ""))})

    async def _send(self) -> str:
        if self._attempts >= MAX_ATTEMPTS:
            return "Too many wrong codes on this call: earlier calls stay closed."
        control = self._call.control
        if control is None or not control.can_send_text:
            return "Text messages cannot be sent from this line: earlier calls stay closed."
        code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
        try:
            await control.send_text(f"Your code is {code}. It expires in {CODE_SECONDS / 60:.0f} minutes.")
        except Exception as exc:  # the call goes on without memory
            logger.warning(f"call {self._call.call_sid}: verification text failed ({exc.__class__.__name__})")
            return "The text message could not be sent: earlier calls stay closed."
        self._code, self._issued_at = code, time.monotonic()
        return "A code was texted to the caller's phone. Ask them to read it back."

    def _check(self, spoken: str) -> str:
        digits = "".join(ch for ch in spoken if ch.isdigit())[:CODE_DIGITS * 2]
        if self._code is None or time.monotonic() - self._issued_at > CODE_SECONDS:
            return f"No valid code was sent; call {SEND_CODE} first."
        if self._attempts >= MAX_ATTEMPTS:
            return "Too many wrong codes on this call: earlier calls stay closed."
        if not secrets.compare_digest(digits.encode(), self._code.encode()):
            self._attempts += 1
            return f"That code is wrong ({MAX_ATTEMPTS - self._attempts} tries left)."
        self._code = None
        logger.info(f"call {self._call.call_sid}: caller verified by text message; earlier calls recalled")
        return self._call.memory or "No earlier calls are on file."
