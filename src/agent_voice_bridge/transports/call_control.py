"""What a stage or tool may do to the call it serves: one typed interface, implemented by the call's session.

A stage gets the call's :class:`~agent_voice_bridge.transports.call_info.CallInfo`;
``call.control`` is this interface while a session runs the call (None in a pipeline
built without one, e.g. a unit test), in the spirit of LiveKit's ``JobContext``. It is
defined here, below the stages, so a stage depends on the promise and never on the
session that keeps it (``calls.live_call.LiveCall``). Transfer joins it here.
"""

from __future__ import annotations

from typing import Protocol


class CallControl(Protocol):
    """Hang up, take a hang-up back, end with a goodbye, text the person on the line, press keys on the line."""

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
