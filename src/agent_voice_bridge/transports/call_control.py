"""What a stage or tool may do to the call it serves: one typed interface, implemented by the call's session.

A stage gets the call's :class:`~agent_voice_bridge.transports.call_info.CallInfo`;
``call.control`` is this interface while a session runs the call (None in a pipeline
built without one, e.g. a unit test), in the spirit of LiveKit's ``JobContext``. It is
defined here, below the stages, so a stage depends on the promise and never on the
session that keeps it (``calls.live_call.LiveCall``). Send-digits and transfer join it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

AfterNoAnswer = Literal["back", "voicemail"]


@dataclass(frozen=True)
class TransferRequest:
    """Put the caller through to a person: what the AI's ``transfer`` tool asks of the call."""

    destination: str
    """The destination's name in the stage's ``transfer:`` (``billing``)."""
    number: str
    """E.164 number to dial."""
    reason: str
    say: str | None = None
    """A line Twilio speaks to the caller before dialling; None when the AI has said its own."""
    caller_id: str | None = None
    """The caller ID the person sees; None: Twilio's default (the caller's own number on an inbound call)."""
    timeout_secs: int = 30
    """How long the person's phone rings before the dial counts as unanswered."""
    on_no_answer: AfterNoAnswer = "back"
    """Unanswered, busy or failed: ``back`` to the AI (which says so), or ``voicemail``."""
    warm: bool = False
    """Warm: the caller waits on hold while the person is rung and briefed, and joins only if they accept."""
    summary: str = ""
    """Warm: the AI's brief for the person (who is calling, about what)."""
    brief_secs: int = 15
    """Warm: how long the person has, once briefed, to accept (press 1 or say yes)."""
    brief: Literal["say", "ai"] = "say"
    """Warm: who briefs the person: Twilio reads the summary (``say``), or the AI talks to them on a stream (``ai``)."""


class CallControl(Protocol):
    """Hang up, take a hang-up back, end with a goodbye, text the person on the line, press keys on the line,
    transfer the call."""

    async def hang_up(self, reason: str) -> None:
        """End the call once what the caller is hearing has played (the AI said goodbye)."""

    async def retract_hang_up(self) -> bool:
        """Take back a ``hang_up`` that has not happened yet (the model cancelled its end_call); True if it was."""

    async def end(self, goodbye: str | None, reason: str) -> None:
        """End the call now, first playing ``goodbye`` (the name of a committed line, see ``assets``) if given."""

    @property
    def can_send_text(self) -> bool:
        """Whether :meth:`send_text` can reach the person (the line has a Twilio account and number)."""

    async def send_text(self, body: str) -> None:
        """Text the person on the line (Twilio REST); raises if it could not be sent."""

    @property
    def can_send_digits(self) -> bool:
        """Whether :meth:`send_digits` can work (the line has a Twilio account to update the call with)."""

    async def send_digits(self, digits: str) -> float:
        """Press ``digits`` (0-9 * #, ``w`` a half-second pause) on the call, as Twilio can: the media stream
        ends, Twilio plays the keys, and a new stream carries the same call on. Returns once the new stream
        is live, with the seconds the call was off the stream; raises if the keys could not be sent."""

    @property
    def can_transfer(self) -> bool:
        """Whether :meth:`transfer` can redirect this call (the line has a Twilio account to do it with)."""

    async def transfer(self, request: TransferRequest) -> None:
        """Once what the caller is hearing has played, redirect the call (Twilio REST) to dial the person;
        this call's pipeline then ends with outcome ``transferred``. Returns at once; if Twilio refuses the
        redirect the call goes on with the AI (logged)."""

    async def answer_transfer(self, accepted: bool) -> None:
        """On the person's leg of a warm transfer: they take the call (joined to the caller) or not (the caller
        goes back to the AI); either way this leg then ends."""
