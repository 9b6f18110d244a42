"""A running call and the handles to end it from outside: shutdown, the time limit, the AI's end_call and transfer.

Kept apart from :mod:`.session` (which runs the call) so that the handover and the
records, which act on a live call, depend on it without depending on each other.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from loguru import logger
from pipecat.pipeline.worker import PipelineWorker

from agent_voice_bridge.assets import spoken
from agent_voice_bridge.calls.transfer import dial_twiml, done_url
from agent_voice_bridge.calls.warm_states import WarmState
from agent_voice_bridge.calls.warm_transfer import WarmTransfers
from agent_voice_bridge.log_values import shown
from agent_voice_bridge.pipelines.chain import Chain
from agent_voice_bridge.pipelines.config import TwilioConfig
from agent_voice_bridge.transports.call_control import TransferRequest
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.twilio_rest import complete_call, redirect_call, send_text, twilio_said

HANG_UP_QUIET_SECS = 0.8
"""After end_call, the line must have been quiet this long (the goodbye fully played) before hanging up."""
HANG_UP_MAX_WAIT_SECS = 20.0
TRANSFER_LINE_WAIT_SECS = 3.0
"""A transfer without a ``say`` line waits this long for the AI's own line (asked for by the tool's result) to begin."""


@dataclass
class LiveCall:
    """A running call and the handles to end it from outside (shutdown, time limit), and its stages'
    :class:`~agent_voice_bridge.transports.call_control.CallControl` (``info.control``)."""

    info: CallInfo
    chain: Chain
    """The chain this call was given when it started: it runs it to the end, whatever the server swaps in."""
    twilio: TwilioConfig = field(default_factory=TwilioConfig)
    worker: PipelineWorker | None = None
    goodbye: bytes | None = None
    ending: bool = False
    outcome: str = "caller_hung_up"
    reason: str | None = None
    next_chain: Chain | None = None
    """The fallback chain to run on this call once the failed AI's pipeline has stopped (see handover.py)."""
    fell_back: str | None = None
    """Once the call moved to a fallback (``voicemail``): the outcome, however the call then ends."""
    webhook_base: str = ""
    """The bridge's public ``https://host`` as Twilio reaches it: where a transfer's ``<Dial action>`` points."""
    transfers: WarmTransfers | None = None
    """The server's warm transfers (a ``warm`` destination puts the caller on hold there)."""
    _hang_up_task: asyncio.Task | None = None
    _hanging_up: bool = False
    _transfer_task: asyncio.Task | None = None
    _decided: bool = False
    _brief_timer: asyncio.TimerHandle | None = None

    async def end(self, goodbye: str | None, reason: str, outcome: str = "ended_by_bridge") -> None:
        """Stop the pipeline; the session then plays ``goodbye`` (a committed line) if given."""
        if self.ending or self.worker is None:
            return
        self.ending = True
        self.outcome = self.fell_back or outcome
        logger.info(f"call {shown(self.info.call_sid)}: ending ({shown(reason, 300)})")
        self.goodbye = spoken(goodbye) if goodbye else None
        await self.worker.cancel(reason=reason)

    async def hang_up(self, reason: str) -> None:
        """The AI said goodbye: hang up once the caller has heard it (Twilio's marks say when). Not while a
        transfer is under way: the AI leaves the call then anyway, and the caller is on their way to a person."""
        if self._hang_up_task is None and self._transfer_task is None:
            self._hang_up_task = asyncio.ensure_future(self._hang_up(reason))

    async def retract_hang_up(self) -> bool:
        """The model took its end_call back: cancel the pending hang-up unless the call is already ending."""
        task = self._hang_up_task
        if task is None or task.done() or self.ending or self._hanging_up:
            return False
        task.cancel()
        self._hang_up_task = None
        logger.info(f"call {self.info.call_sid}: hang-up retracted")
        return True

    @property
    def can_send_text(self) -> bool:
        twilio = self.twilio
        return bool(twilio.account_sid and twilio.auth_token and twilio.phone_number)

    async def send_text(self, body: str) -> None:
        """Text the person on the line from the line's number (Twilio REST, in a thread)."""
        if not self.can_send_text:
            raise RuntimeError("this line has no Twilio account and number to text from")
        await asyncio.to_thread(send_text, self.twilio, self.info.person, body)

    @property
    def can_transfer(self) -> bool:
        return bool(self.twilio.account_sid and self.twilio.auth_token and self.info.call_sid and self.webhook_base)

    async def transfer(self, request: TransferRequest) -> None:
        """Redirect the call to dial ``request.number`` once the AI's line has played (see calls/transfer.py)."""
        if not self.can_transfer:
            raise RuntimeError("this line has no Twilio account to transfer calls with")
        if self._transfer_task is None and self._hang_up_task is None:
            self._transfer_task = asyncio.ensure_future(self._transfer(request))

    async def _transfer(self, request: TransferRequest) -> None:
        if not request.say:  # the model was told to say its line now: let it begin before waiting for quiet
            await self._line_begins(TRANSFER_LINE_WAIT_SECS)
        await self._heard_out()
        if self.ending:
            return
        try:
            if request.warm and self.transfers is not None:
                await self.transfers.start(self.info, request, self.webhook_base)
            else:
                twiml = dial_twiml(request, done_url(self.webhook_base, request, self.info))
                await asyncio.to_thread(redirect_call, self.twilio, self.info.call_sid, twiml)
        except Exception as exc:  # Twilio said no or cannot be reached: the caller stays with the AI
            logger.error(f"call {self.info.call_sid}: transfer to {request.destination} failed: {twilio_said(exc)}; "
                         "the call goes on")
            self._transfer_task = None
            return
        logger.info(f"call {self.info.call_sid}: transferred to {request.destination} "
                    f"({request.number}): {shown(request.reason, 200)}")
        self.reason = request.reason
        if self.info.journal is not None:
            self.info.journal.update(transfer_destination=request.destination, transfer_to=request.number)
        await self.end(None, f"transferred to {request.destination}", "transferred")

    async def answer_transfer(self, accepted: bool) -> None:
        """The person being briefed (a warm transfer's ``brief: ai``) decided: see WarmTransfers.decide."""
        if self.ending or self._decided or self.transfers is None:
            return
        self._decided = True
        logger.info(f"call {self.info.call_sid}: the person {'takes' if accepted else 'declines'} the transferred call")
        after = await self.transfers.decide(self.info, accepted, self.webhook_base)
        await self.end(None, "the person " + ("took the call" if accepted else "declined"),
                       "transferred" if after == WarmState.JOINED else "declined")

    def brief_deadline(self, seconds: float) -> None:
        """The person has this long to decide (after the AI's brief); then it counts as a no."""
        self._brief_timer = asyncio.get_running_loop().call_later(
            seconds, lambda: asyncio.ensure_future(self.answer_transfer(False)))

    async def _line_begins(self, timeout: float) -> None:
        loop, playback = asyncio.get_running_loop(), self.info.playback
        deadline = loop.time() + timeout
        while not playback.playing and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def _heard_out(self) -> None:
        """Wait until the line has been quiet long enough that what the AI said has fully played (bounded)."""
        loop, playback = asyncio.get_running_loop(), self.info.playback
        deadline, quiet_since = loop.time() + HANG_UP_MAX_WAIT_SECS, None
        while loop.time() < deadline:
            if playback.playing:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= HANG_UP_QUIET_SECS:
                break
            await asyncio.sleep(0.05)

    async def _hang_up(self, reason: str) -> None:
        await self._heard_out()
        self._hanging_up = True  # from here on the hang-up cannot be taken back
        if self.twilio.account_sid and self.twilio.auth_token and self.info.call_sid:
            await asyncio.to_thread(complete_call, self.twilio, self.info.call_sid)
        await self.end(None, reason, "ai_ended")
