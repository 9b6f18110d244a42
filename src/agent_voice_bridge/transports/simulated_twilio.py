"""Twilio's side of a transfer, for the simulated caller: ``voice-bridge call --twilio-api PORT``.

A bridge transfers a call by asking Twilio's REST API to give it new TwiML, and rings
the person of a warm transfer with a REST call of its own. Pointed at this instead
(``twilio.api_base_url: http://127.0.0.1:PORT``), the bridge's requests reach the
simulated caller, which then follows the transfer to its end as Twilio would: it
plays the person's part as ``--transfer-answer`` says (takes the call, no answer,
busy, declines, or an answering machine), posts the signed ``<Dial action>``,
``<Gather>`` and status webhooks, and, when the call comes back to the bridge, keeps
the media going on a new stream of the same call.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from twilio.request_validator import RequestValidator

from agent_voice_bridge.transports.simulated_caller import (
    CallResult,
    Dtmf,
    Step,
    WaitQuiet,
    WaitReply,
    parse_twiml,
    run_call,
)

API = "/2010-04-01/Accounts/{account}"
PersonAnswer = Literal["take", "no-answer", "busy", "decline", "machine"]
TAKES = "take"
WAIT_SECS = 10.0
"""How long the caller waits for the bridge's next REST request (a warm transfer's decision) before giving up."""


@dataclass
class Leg:
    """One part of a followed call, for the printout: what happened and, for a media leg, its result."""

    what: str
    result: CallResult | None = None


@dataclass
class SimulatedTwilio:
    """Accepts the bridge's REST requests about calls (``Calls.json``, ``Calls/{sid}.json``), with Basic auth."""

    account_sid: str
    auth_token: str
    port: int
    redirects: dict[str, list[str]] = field(default_factory=dict)
    placed: list[dict[str, str]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task | None = None

    def _authorised(self, request: Request, account: str) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or account != self.account_sid:
            return False
        return base64.b64decode(encoded).decode() == f"{self.account_sid}:{self.auth_token}"

    def _app(self) -> FastAPI:
        app = FastAPI()
        refused = JSONResponse({"code": 20003, "message": "Authenticate", "status": 401}, status_code=401)

        @app.post(API + "/Calls.json")
        async def create(account: str, request: Request):
            if not self._authorised(request, account):
                return refused
            form = {k: str(v) for k, v in (await request.form()).items()}
            sid = "CA" + uuid.uuid4().hex
            self.placed.append({"sid": sid, **form})
            self._changed.set()
            return JSONResponse({"sid": sid, "account_sid": account, "to": form.get("To"), "from": form.get("From"),
                                 "status": "queued", "direction": "outbound-api"}, status_code=201)

        @app.post(API + "/Calls/{call_sid}.json")
        async def update(account: str, call_sid: str, request: Request):
            if not self._authorised(request, account):
                return refused
            form = {k: str(v) for k, v in (await request.form()).items()}
            if "Twiml" in form:
                self.redirects.setdefault(call_sid, []).append(form["Twiml"])
                self._changed.set()
            return {"sid": call_sid, "account_sid": account, "status": form.get("Status", "in-progress")}

        return app

    async def __aenter__(self) -> SimulatedTwilio:
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.ensure_future(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # the port is taken: say so
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    async def next_redirect(self, call_sid: str, seen: int, timeout: float = WAIT_SECS) -> str | None:
        """The call's redirect after the first ``seen`` ones, waiting up to ``timeout`` for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.redirects.get(call_sid, [])) <= seen:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                return None
        return self.redirects[call_sid][seen]

    async def post(self, url: str, form: dict[str, str]) -> str:
        """A signed webhook, as Twilio sends it; returns the TwiML answered."""
        signature = RequestValidator(self.auth_token).compute_signature(url, form)
        async with httpx.AsyncClient(timeout=15) as http:
            response = await http.post(url, data=form, headers={"X-Twilio-Signature": signature})
        response.raise_for_status()
        return response.text


async def follow_transfers(twilio: SimulatedTwilio, first: CallResult, *, from_number: str, to_number: str,
                           answer: PersonAnswer, listen: list[Step], most: int = 3) -> list[Leg]:
    """After ``first`` (a media leg that ended), follow the transfers the bridge made of the call (at most
    ``most``), playing the person as ``answer`` says and listening on each leg back with ``listen``."""
    legs: list[Leg] = []
    call_sid, taken, transfers = first.call_sid, 0, 0
    base = {"AccountSid": twilio.account_sid, "CallSid": call_sid, "From": from_number, "To": to_number,
            "Direction": "inbound", "ApiVersion": "2010-04-01"}

    async def redirected(timeout: float) -> str | None:
        nonlocal taken
        twiml = await twilio.next_redirect(call_sid, taken, timeout)
        taken += twiml is not None
        return twiml

    twiml = await redirected(0.0)
    while twiml is not None:
        root = ET.fromstring(twiml)
        said = " ".join(s.text or "" for s in root.findall("Say"))
        dial = root.find("Dial")
        if root.find("Connect/Stream") is not None:
            stream_url, parameters = parse_twiml(twiml)
            result = await run_call(stream_url, list(listen), call_sid=call_sid, custom_parameters=parameters)
            news = parameters.get("transferStatus")
            legs.append(Leg("back on the line with the bridge" + (f" (the transfer: {news})" if news else ""), result))
            twiml = await redirected(0.5)  # the bridge transferred the call again before that leg ended
            continue
        if dial is None or transfers == most:
            legs.append(Leg(f"the simulated caller stops following here: {twiml[:200]}"))
            break
        transfers += 1
        number, conference = dial.find("Number"), dial.find("Conference")
        if number is not None:
            legs.append(Leg(f"transferred to {number.text}" + (f" after hearing {said!r}" if said else "")
                            + f" (rings {dial.get('timeout', '30')} s)"))
            status = "completed" if answer == TAKES else ("no-answer" if answer in ("decline", "machine") else answer)
            form = {**base, "CallStatus": "in-progress", "DialCallStatus": status}
            if status == "completed":
                form.update(DialCallSid="CA" + uuid.uuid4().hex, DialCallDuration="30")
            legs.append(Leg(f"the person {'took the call' if status == 'completed' else f'did not answer: {status}'}"))
            twiml = await twilio.post(dial.get("action", ""), form)
            if root_is_hangup(twiml):
                legs.append(Leg("the call ended"))
                break
        elif conference is not None:
            legs.append(Leg("on hold for a warm transfer" + (f" after hearing {said!r}" if said else "")))
            if not await _warm(twilio, dial, conference, base, answer, legs):
                break
            twiml = await redirected(WAIT_SECS)
        else:
            legs.append(Leg(f"the simulated caller stops following here: {twiml[:200]}"))
            break
    return legs


def root_is_hangup(twiml: str) -> bool:
    root = ET.fromstring(twiml)
    return root.find("Connect/Stream") is None and (root.find("Hangup") is not None or len(root) == 0)


async def _warm(twilio: SimulatedTwilio, dial: ET.Element, conference: ET.Element, base: dict[str, str],
                answer: PersonAnswer, legs: list[Leg]) -> bool:
    """Play the person of a warm transfer; True if the caller is to be brought back (False: the call is over)."""
    person = twilio.placed[-1] if twilio.placed else None
    if person is None:
        legs.append(Leg("no call to the person was placed"))
        return False
    legs.append(Leg(f"the bridge rings {person.get('To')} (caller ID {person.get('From')})"))
    form = {"AccountSid": twilio.account_sid, "CallSid": person["sid"], "From": person.get("From", ""),
            "To": person.get("To", ""), "Direction": "outbound-api", "ApiVersion": "2010-04-01"}
    if answer in ("no-answer", "busy"):
        await twilio.post(person["StatusCallback"], {**form, "CallStatus": answer})
        legs.append(Leg(f"the person's phone: {answer}"))
    else:
        answered_by = "machine_start" if answer == "machine" else "human"
        brief = await twilio.post(person["Url"], {**form, "CallStatus": "in-progress", "AnsweredBy": answered_by})
        digits = "1" if answer == TAKES else "2"
        gather = ET.fromstring(brief).find("Gather")
        if ET.fromstring(brief).find("Connect/Stream") is not None:  # brief: ai, on the person's own stream
            stream_url, parameters = parse_twiml(brief)
            result = await run_call(stream_url, [WaitReply(timeout=15, idle=1.0, what="the brief"), Dtmf(digits),
                                                 WaitQuiet(idle=1.0)], call_sid=person["sid"],
                                    custom_parameters=parameters)
            legs.append(Leg(f"the AI briefed the person on their own stream; they pressed {digits}", result))
            joined = await twilio.next_redirect(person["sid"], 0, timeout=WAIT_SECS) or ""
        elif gather is not None:
            legs.append(Leg(f"the person hears: {' '.join(gather.itertext()).strip()!r}"))
            joined = await twilio.post(gather.get("action", ""), {**form, "CallStatus": "in-progress", "Digits": digits})
            legs.append(Leg(f"the person pressed {digits}"))
        else:
            legs.append(Leg(f"answered by {answered_by}: the bridge hung up on it"))
            return True
        if joined and ET.fromstring(joined).find("Dial/Conference") is not None:
            legs.append(Leg(f"the person joined the caller in conference {conference.text}; the caller hangs up"))
            await twilio.post(dial.get("action", ""), {**base, "CallStatus": "completed", "DialCallStatus": "completed"})
            return False
        legs.append(Leg("the person declined"))
    return True
