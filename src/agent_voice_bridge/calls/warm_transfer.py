"""Warm transfers: put the caller on hold, ring and brief the person, join them or bring the caller back.

One object per server (``CallRegistry.transfers``). :meth:`WarmTransfers.start` is
what the AI's ``transfer`` tool does on a ``warm`` destination: ring the person
(REST, with answering-machine detection, their own status callbacks) and move the
caller into a conference that plays hold audio. From then on Twilio's webhooks
(``web/transfer.py``) report events, and :meth:`WarmTransfers.move` applies them to
the state machine in :mod:`.warm_states`. The state lives in the call's record
(``transfer_status``) when calls are stored, so every worker process sees it; else in
this process. Whatever state the transfer is left in, the watchdog started here
brings the caller back once :func:`~.warm_states.hold_limit_secs` have passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from loguru import logger

from agent_voice_bridge.calls import transfer as twiml
from agent_voice_bridge.calls.warm_states import WarmEvent, WarmState, hold_limit_secs, next_state
from agent_voice_bridge.log_values import shown
from agent_voice_bridge.pipelines.config import TwilioConfig
from agent_voice_bridge.services.transfer_brief import BRIEF, TRANSFER_ROLE
from agent_voice_bridge.security import CallGate
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.call_control import TransferRequest
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.twilio_rest import end_call, place_call, twilio_said, update_call
from agent_voice_bridge.transports.twiml import connect_twiml, stream_url

BRIEF_CALL, BRIEF_CALLER, BRIEF_CALLEE = "transferCall", "transferCaller", "transferCallee"
BRIEF_THEN, BRIEF_DIRECTION = "transferThen", "transferDirection"
"""Stream <Parameter>s of the person's leg (``brief: ai``): the caller's call, numbers, what follows a no, direction."""
BACK_STATUS = {WarmEvent.MACHINE_ANSWERED: "machine", WarmEvent.DECLINED: "declined",
               WarmEvent.PERSON_LEFT: "left", WarmEvent.TIMED_OUT: "no-answer"}
"""How the caller's news is worded (``services.transfer``) for each way a warm transfer fails."""


class WarmTransfers:
    """The warm transfers of this server: their state, Twilio's moves, and a watchdog each."""

    def __init__(self, twilio: TwilioConfig, gate: CallGate, storage: CallStore | None):
        self._twilio = twilio
        self._gate = gate
        self._storage = storage
        self._states: dict[str, WarmState] = {}
        self._watchdogs: set[asyncio.Task] = set()
        self.hold_limit: Callable[[TransferRequest], float] = lambda r: hold_limit_secs(r.timeout_secs, r.brief_secs)
        """How long a caller may wait on hold (tests shorten it)."""

    # ---- state

    async def state(self, call_sid: str) -> WarmState | None:
        if self._storage is None:
            return self._states.get(call_sid)
        try:
            record = await self._storage.get_call(call_sid)
        except Exception as exc:  # the database is down: this process's view is the best there is
            logger.error(f"call {call_sid}: reading the transfer's state failed ({exc.__class__.__name__})")
            return self._states.get(call_sid)
        status = record.transfer_status if record is not None else None
        return WarmState(status) if status in WarmState.__members__.values() else self._states.get(call_sid)

    async def _set(self, call_sid: str, state: WarmState) -> None:
        self._states[call_sid] = state
        if self._storage is not None:
            try:
                await self._storage.update_call(call_sid, transfer_status=state.value)
            except Exception as exc:
                logger.error(f"call {call_sid}: storing the transfer's state failed ({exc.__class__.__name__})")

    async def move(self, call_sid: str, event: WarmEvent) -> tuple[WarmState | None, WarmState | None]:
        """Apply ``event``; returns (state before, state after), after None when the event does not apply."""
        before = await self.state(call_sid)
        after = next_state(before, event) if before is not None else None
        if after is not None:
            logger.info(f"call {call_sid}: warm transfer {before} → {after} ({event})")
            await self._set(call_sid, after)
        return before, after

    # ---- Twilio's moves

    async def start(self, info: CallInfo, request: TransferRequest, base: str) -> None:
        """Ring the person and put the caller on hold; raises (the caller stays with the AI) if Twilio refuses."""
        facts = twiml.call_facts(request, info)
        caller_sid = info.call_sid
        person_facts = {**facts, "call": caller_sid, "caller": info.caller, "callee": info.callee,
                        "summary": request.summary, "brief_secs": str(request.brief_secs)}
        if request.brief == "ai":
            person_facts["brief"] = "ai"
        twilio = self._twilio.model_copy(update={"phone_number": request.caller_id or info.line_number
                                                 or self._twilio.phone_number})
        person = await asyncio.to_thread(
            place_call, twilio, to=request.number, answer_url=twiml.url(base, twiml.PERSON_PATH, person_facts),
            status_url=twiml.url(base, twiml.PERSON_STATUS_PATH, person_facts), machine_detection="Enable",
            timeout=request.timeout_secs)
        await self._set(caller_sid, WarmState.DIALLING)
        hold = twiml.hold_twiml(request, caller_sid,
                                twiml.url(base, twiml.TRANSFER_DONE_PATH, {**facts, "person": person.call_sid}),
                                twiml.url(base, twiml.HOLD_PATH, facts))
        try:
            await asyncio.to_thread(update_call, self._twilio, caller_sid, hold)
        except Exception:
            await self._set(caller_sid, WarmState.BACK)
            await self.end_person(person.call_sid, WarmState.DIALLING)
            raise
        logger.info(f"call {caller_sid}: on hold while {request.destination} ({request.number}) is rung "
                    f"as {person.call_sid}")
        watchdog = asyncio.ensure_future(self._watch(info, request, person.call_sid, base))
        self._watchdogs.add(watchdog)
        watchdog.add_done_callback(self._watchdogs.discard)

    async def _watch(self, info: CallInfo, request: TransferRequest, person_sid: str, base: str) -> None:
        await asyncio.sleep(self.hold_limit(request))
        before, after = await self.move(info.call_sid, WarmEvent.TIMED_OUT)
        if after is None:
            return  # joined, back or ended: nobody is waiting
        logger.warning(f"call {info.call_sid}: still on hold after {self.hold_limit(request):g} s; bringing them back")
        await self.end_person(person_sid, before)
        facts = twiml.call_facts(request, info)
        await self.bring_back(info.call_sid, info.caller, info.callee, facts, BACK_STATUS[WarmEvent.TIMED_OUT], base)

    async def bring_back(self, call_sid: str, caller: str, callee: str, facts: dict[str, str], status: str,
                         base: str) -> None:
        """Redirect the caller from hold to a new stream of the same call, with the news (``status``: how the
        transfer failed, as the AI will word it) (REST)."""
        parameters = twiml.back_parameters(self._gate, call_sid, caller, callee, facts, status)
        await self._rest(update_call, call_sid, connect_twiml(stream_url(base), parameters), "bringing the caller back")

    async def end_person(self, person_sid: str, state: WarmState | None) -> None:
        """Cancel the person's call while it rings, hang it up once answered (nobody may wait for nothing)."""
        status = "canceled" if state == WarmState.DIALLING else "completed"
        await self._rest(end_call, person_sid, status, f"ending the person's call ({status})")

    async def _rest(self, action: Callable[..., object], call_sid: str, argument: str, what: str) -> None:
        try:
            await asyncio.to_thread(action, self._twilio, call_sid, argument)
        except Exception as exc:  # logged; the watchdog or Twilio's own timeouts still end the wait
            logger.error(f"call {shown(call_sid)}: {what} failed: {twilio_said(exc)}")

    def brief_parameters(self, person_sid: str, person_from: str, person_to: str, facts: dict[str, str]) -> dict[str, str]:
        """The stream <Parameter>s of the person's call when the AI briefs them (``brief: ai``)."""
        parameters = {"caller": person_from, "callee": person_to, "callSid": person_sid, "direction": "outbound",
                      TRANSFER_ROLE: BRIEF, "transferTo": facts.get("to", ""), "summary": facts.get("summary", ""),
                      "briefSecs": facts.get("brief_secs", "15"), BRIEF_CALL: facts.get("call", ""),
                      BRIEF_CALLER: facts.get("caller", ""), BRIEF_CALLEE: facts.get("callee", ""),
                      BRIEF_THEN: facts.get("then", "back"), BRIEF_DIRECTION: facts.get("direction", "inbound")}
        return {**parameters, **self._gate.stream_parameters(person_sid, person_from, person_to, facts.get("line", ""))}

    async def decide(self, person: CallInfo, accepted: bool, base: str) -> WarmState | None:
        """The briefed person (``brief: ai``) took the call or not: join them to the caller's conference, or end
        their call and bring the caller back. Returns the state the transfer moved to (None: nobody waits)."""
        params = person.parameters
        caller_sid = params.get(BRIEF_CALL, "")
        _, after = await self.move(caller_sid, WarmEvent.ACCEPTED if accepted else WarmEvent.DECLINED)
        if after == WarmState.JOINED:
            await self._rest(update_call, person.call_sid, twiml.join_twiml(caller_sid), "joining the person")
            return after
        bye = "Thank you. Goodbye." if after == WarmState.BACK else "Sorry, the caller is no longer waiting. Goodbye."
        await self._rest(update_call, person.call_sid, twiml.goodbye_twiml(bye), "ending the person's call")
        if after == WarmState.BACK:
            facts = {"to": params.get("transferTo", ""), "then": params.get(BRIEF_THEN, "back"), "line": person.line}
            if params.get(BRIEF_DIRECTION) == "outbound":
                facts["direction"] = "outbound"
            await self.bring_back(caller_sid, params.get(BRIEF_CALLER, ""), params.get(BRIEF_CALLEE, ""), facts,
                                  BACK_STATUS[WarmEvent.DECLINED], base)
        return after

    async def close(self) -> None:
        for watchdog in list(self._watchdogs):
            watchdog.cancel()

