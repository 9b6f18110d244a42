"""A running call and the handles to act on it from outside: shutdown, the time limit, the AI's tools
(end_call, send_digits, transfer).

Kept apart from :mod:`.session` (which runs the call) so that the handover and the
records, which act on a live call, depend on it without depending on each other.

Pressing keys (``send_digits``): Twilio's media stream carries no DTMF from the server
(it takes only ``media``, ``mark`` and ``clear``), so the call's TwiML is replaced through
the REST API with ``<Play digits>`` followed by a new ``<Connect><Stream>`` to this
server. The current stream gets ``stop`` and closes, Twilio plays the keys, and a new
stream (new streamSid, same callSid, a fresh one-time stream token) connects. The
session hands that stream to this call (:meth:`LiveCall.continue_on`), and the call's
``twilio.input`` and ``twilio.output`` go on with it: same pipeline, same AI session and
conversation, same record. What it costs is the gap, measured in the tests.

Transferring (``transfer``): the call's TwiML is replaced the same way, with a ``<Dial>``
to the person (cold) or hold music while the person is rung (warm, see
:mod:`.warm_transfer`); this pipeline then ends. A call that comes back from a transfer
is a new session of the same call (see :mod:`.session`), not a stream joining this one.

A softphone call (the browser page, ``web/softphone.py``) has no Twilio call to redirect:
its transfer is shown, not made. The call gets a ``transfer`` event with the TwiML Twilio
would have been given (:attr:`LiveCall.events`, read by the page) and ends as a cold
transfer hands a call over: outcome ``transferred``, destination and reason recorded.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
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
from agent_voice_bridge.transports.twilio_rest import (
    TWILIO_TIMEOUT_SECS,
    complete_call,
    send_text,
    twilio_said,
    update_call,
)
from agent_voice_bridge.transports.twilio_stream import TwilioMediaStream
from agent_voice_bridge.transports.twiml import connect_twiml

HANG_UP_QUIET_SECS = 0.8
"""After end_call, the line must have been quiet this long (the goodbye fully played) before hanging up."""
HANG_UP_MAX_WAIT_SECS = 20.0
TRANSFER_LINE_WAIT_SECS = 3.0
"""A transfer without a ``say`` line waits this long for the AI's own line (asked for by the tool's result) to begin."""
DIGITS_QUIET_MAX_WAIT_SECS = 10.0
"""Before pressing keys the AI's words (``Pressing 1 now``) play out, for at most this long: the stream ends then."""
RECONNECT_TIMEOUT_SECS = 15.0
"""After the keys have played, Twilio's new stream must start within this, or the call is taken as over."""
DIGITS = re.compile(r"[0-9*#w]{1,32}")
"""What ``<Play digits>`` takes: keys 0-9 * #, and ``w`` for half a second's pause."""
KEY_SECS, PAUSE_SECS = 0.2, 0.5


def digits_seconds(digits: str) -> float:
    """About how long Twilio takes to play ``digits`` (Twilio documents ``w``; a key's length is our guess)."""
    return sum(PAUSE_SECS if key == "w" else KEY_SECS for key in digits)


def softphone_transfer(request: TransferRequest, action: str) -> dict[str, object]:
    """The event a softphone call's page gets for a transfer: where to, why, and (cold) the TwiML the call's
    redirect would carry. A warm transfer rings and briefs the person on a call of their own: only a real
    call can, so the page is told so."""
    return {"kind": "transfer", "destination": request.destination, "number": request.number,
            "reason": request.reason, "warm": request.warm,
            "twiml": None if request.warm else dial_twiml(request, action),
            "note": ("a warm transfer puts the caller on hold and rings and briefs the person: that needs a real "
                     "call" if request.warm else "a real call would now be redirected to this TwiML")}


@dataclass(frozen=True)
class StreamHome:
    """Where Twilio connects this call's next media stream: the URL, and its ``<Parameter>``s (a fresh one-time
    stream token each time it is asked)."""

    url: str
    parameters: Callable[[], dict[str, str]]


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
    stream_home: StreamHome | None = None
    """Set by the session: without it (a pipeline run without a server) keys cannot be sent."""
    events: list[dict[str, object]] = field(default_factory=list)
    """What the softphone page is shown of this call besides its audio: the transfer Twilio would have made."""
    _hang_up_task: asyncio.Task | None = None
    _hanging_up: bool = False
    _transfer_task: asyncio.Task | None = None
    _transfer_sent: bool = False
    """The transfer's REST update is out: the stream's end (Twilio stops it taking the update) is the transfer's."""
    _decided: bool = False
    _brief_timer: asyncio.TimerHandle | None = None
    _stream_released: asyncio.Event | None = None

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
    def _has_twilio(self) -> bool:
        """Whether this call can be changed through Twilio's REST API (an account, and the call's SID)."""
        return bool(self.twilio.account_sid and self.twilio.auth_token and self.info.call_sid)

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
        return self.info.softphone or (self._has_twilio and bool(self.webhook_base))

    async def transfer(self, request: TransferRequest) -> None:
        """Redirect the call to dial ``request.number`` once the AI's line has played (see calls/transfer.py)."""
        if not self.can_transfer:
            raise RuntimeError("this line has no Twilio account to transfer calls with")
        if self._transfer_task is None and self._hang_up_task is None:
            self._transfer_task = asyncio.ensure_future(self._transfer(request))

    async def _transfer(self, request: TransferRequest) -> None:
        if not request.say:  # the model was told to say its line now: let it begin before waiting for quiet
            await self._line_begins(TRANSFER_LINE_WAIT_SECS)
        await self._until_quiet(HANG_UP_MAX_WAIT_SECS)
        if self.ending:
            return
        self._transfer_sent = True
        try:
            if self.info.softphone:  # no Twilio call behind it: show the page what Twilio would have done
                self.events.append(softphone_transfer(request, done_url(self.webhook_base, request, self.info)))
            elif request.warm and self.transfers is not None:
                await self.transfers.start(self.info, request, self.webhook_base)
            else:
                twiml = dial_twiml(request, done_url(self.webhook_base, request, self.info))
                await asyncio.to_thread(update_call, self.twilio, self.info.call_sid, twiml)
        except Exception as exc:  # Twilio said no or cannot be reached: the caller stays with the AI
            logger.error(f"call {self.info.call_sid}: transfer to {request.destination} failed: {twilio_said(exc)}; "
                         "the call goes on")
            self._transfer_sent = False
            self._transfer_task = None
            return
        logger.info(f"call {self.info.call_sid}: transferred to {request.destination} "
                    f"({request.number}): {shown(request.reason, 200)}")
        self.reason = request.reason
        if self.info.journal is not None:
            self.info.journal.update(transfer_destination=request.destination, transfer_to=request.number)
        await self.end(None, f"transferred to {request.destination}", "transferred")

    async def settle_transfer(self) -> None:
        """The pipeline has ended: a transfer whose REST update is out gets to finish, so the call's outcome is the
        transfer's (Twilio stops the stream as it takes the update: that ``stop`` may come before the REST answer);
        one still waiting for the AI's line to play is dropped (the caller hung up first)."""
        task = self._transfer_task
        if task is None or task.done():
            return
        if not self._transfer_sent:
            task.cancel()
            return
        try:
            # a warm transfer makes two requests (ring the person, put the caller on hold), each bounded
            await asyncio.wait_for(asyncio.shield(task), 2 * TWILIO_TIMEOUT_SECS + 1.0)
        except TimeoutError:
            logger.warning(f"call {shown(self.info.call_sid)}: Twilio did not answer the transfer's update in time")

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

    @property
    def can_send_digits(self) -> bool:
        return self._has_twilio and self.stream_home is not None

    async def send_digits(self, digits: str) -> float:
        """Press ``digits`` on the call: replace its TwiML, and go on when Twilio's new stream has started.

        Returns the seconds from the REST update to the new stream's ``start`` (the keys' own time included).
        Shielded: a caller that stops waiting (the model took its tool call back) does not stop a switch that
        Twilio may already be making, which would leave the call between two streams.
        """
        if not DIGITS.fullmatch(digits):
            raise ValueError(f"digits must be 1 to 32 of 0-9 * # w, got {shown(repr(digits), 60)}")
        if not self.can_send_digits or self.stream_home is None:
            raise RuntimeError("this line has no Twilio account to press keys with (twilio.account_sid, auth_token)")
        if self.info.next_stream is not None:
            raise RuntimeError("keys are already being pressed on this call")
        return await asyncio.shield(self._press(digits, self.stream_home))

    async def _press(self, digits: str, home: StreamHome) -> float:
        info = self.info
        await self._until_quiet(DIGITS_QUIET_MAX_WAIT_SECS)
        loop = asyncio.get_running_loop()
        moved = info.next_stream = loop.create_future()  # before the update: Twilio's stop may come at once
        twiml = connect_twiml(home.url, home.parameters(), digits=digits)
        began = loop.time()
        timeout = RECONNECT_TIMEOUT_SECS + digits_seconds(digits)
        try:
            await asyncio.to_thread(update_call, self.twilio, info.call_sid, twiml)
            stream = await asyncio.wait_for(asyncio.shield(moved), timeout)
        except TimeoutError:
            raise RuntimeError(f"Twilio did not bring the call back on a new stream within {timeout:g} s") from None
        finally:
            if not moved.done():
                moved.set_result(None)  # twilio.input: no new stream is coming (the old one may still run)
            if info.next_stream is moved and moved.result() is None:
                info.next_stream = None
        if stream is None:
            raise RuntimeError("the call ended while the keys were played")
        gap = loop.time() - began
        logger.info(f"call {shown(info.call_sid)}: pressed {len(digits)} keys; back on stream "
                    f"{shown(info.stream_sid)} after {gap * 1000:.0f} ms")
        return gap

    async def continue_on(self, stream: TwilioMediaStream) -> bool:
        """The new stream Twilio opened after :meth:`send_digits`: the call goes on with it.

        Returns False if this call is not moving to a new stream; else holds the stream's handler until the
        call ends or moves on again, True.
        """
        moved = self.info.next_stream
        if moved is None or moved.done() or stream.start is None:
            return False
        previous, released = self._stream_released, asyncio.Event()
        self._stream_released = released
        self.info.stream, self.info.stream_sid = stream, stream.start.stream_sid
        moved.set_result(stream)
        if previous is not None:
            previous.set()
        await released.wait()
        return True

    def release_stream(self) -> None:
        """The call is over: a stream handler held by :meth:`continue_on` may end."""
        if self._stream_released is not None:
            self._stream_released.set()

    async def _until_quiet(self, max_wait: float) -> None:
        """Wait until the caller has heard everything sent (quiet for a moment), at most ``max_wait`` s."""
        loop, playback = asyncio.get_running_loop(), self.info.playback
        deadline, quiet_since = loop.time() + max_wait, None
        while loop.time() < deadline:
            if playback.playing:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= HANG_UP_QUIET_SECS:
                return
            await asyncio.sleep(0.05)

    async def _hang_up(self, reason: str) -> None:
        await self._until_quiet(HANG_UP_MAX_WAIT_SECS)
        self._hanging_up = True  # from here on the hang-up cannot be taken back
        if self._has_twilio:
            await asyncio.to_thread(complete_call, self.twilio, self.info.call_sid)
        await self.end(None, reason, "ai_ended")
