"""A fake of Twilio's REST API (``/2010-04-01/…/Calls`` and ``…/Messages``) and of Twilio's side of a placed call.

The ``twilio`` package's client talks to it when ``twilio.api_base_url`` points here.
Wire facts followed (twilio-python 9, API 2010-04-01): requests are form-encoded with
Basic auth ``AccountSid:AuthToken`` (a wrong one is answered 401 with error 20003);
``StatusCallbackEvent`` repeats once per event; a created call answers 201 with the
call resource (``sid`` ``CA`` + 32 hex, ``status`` ``queued``, ``direction``
``outbound-api``); a missing ``To``/``From``/``Url`` is a 400 with Twilio's error shape.

A call update (``POST …/Calls/{sid}.json``) with ``Twiml`` is checked against the twilio
package's TwiML model (every element a verb or noun the SDK knows, nested where the SDK
allows it; else 400 with Twilio's 12100 "document parse failure"), as Twilio would
refuse a document it cannot run.

Twilio's side of the call is driven by the test: :meth:`FakeTwilioRest.status` posts a
signed status callback (``CallStatus`` ``initiated``/``ringing``/``in-progress``/
``completed``/``busy``/``no-answer``/``failed``), :meth:`FakeTwilioRest.answer` posts the
signed answer webhook to the call's ``Url`` (with ``AnsweredBy`` when machine detection
was asked for) and returns the TwiML, which the test then plays with the simulated caller;
:meth:`FakeTwilioRest.dial_ended` posts a redirected call's ``<Dial action>`` with the
``DialCallStatus`` the test chose (the person answered and hung up, nobody answered…).

A live call's TwiML can be replaced (``calls(sid).update(twiml=…)``): the update answers at
once with the call resource, then, as Twilio does, the call's current ``<Connect><Stream>``
ends (its stream gets ``stop`` and closes) and the new TwiML runs on the same call
(``<Play digits>`` to the far end, then a new stream to its ``<Connect><Stream url>``). The
simulated caller does that part: ``run_call(..., redirects=twilio.redirects)`` lets this
server reach the call by its SID. TwiML the twilio package's voice model does not allow
(not XML, no ``<Response>`` root, a verb where it cannot stand) is refused like Twilio
refuses it (400, error 12100), and nothing happens to the call.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from twilio.request_validator import RequestValidator
from twilio.twiml import voice_response

API = "/2010-04-01/Accounts/{account}"


@dataclass
class PlacedCall:
    sid: str
    form: dict[str, str | list[str]]
    updates: list[dict[str, str]] = field(default_factory=list)


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                         "status": status}, status_code=status)


class TwimlError(ValueError):
    pass


def _snake(tag: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", tag).lower()


def check_twiml(text: str) -> ET.Element:
    """The document's root, if the twilio package's voice TwiML model allows every element where it stands."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise TwimlError(f"not XML: {exc}") from None
    if root.tag != "Response":
        raise TwimlError(f"the root is <{root.tag}>, not <Response>")

    def walk(element: ET.Element, model: type) -> None:
        for child in element:
            if not hasattr(model, _snake(child.tag)) or not hasattr(voice_response, child.tag):
                raise TwimlError(f"<{child.tag}> is not allowed in <{element.tag}>")
            walk(child, getattr(voice_response, child.tag))

    walk(root, voice_response.VoiceResponse)
    return root


class FakeTwilioRest:
    """Use as ``with FakeTwilioRest("ACtest", "secret") as twilio:``; ``twilio.url`` is the API base URL."""

    def __init__(self, account_sid: str, auth_token: str):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.calls: list[PlacedCall] = []
        self.updates: list[dict[str, str]] = []
        self.messages: list[dict[str, str]] = []
        self.redirects: dict[str, Callable[[str], object]] = {}
        """Live simulated calls by SID (``run_call(redirects=…)``): where an update's new TwiML is played."""
        self.answer_late: float | None = None
        """Seconds: an update's answer waits until the simulated call has played the new TwiML (the old stream's
        ``stop`` sent), and this long more: Twilio's answer may come after the stream has ended (a slow network)."""
        self.outage: tuple[int, str, str] | None = None
        """(status, content type, body): set it and every API request gets that answer (an outage, a proxy's page)."""
        self._validator = RequestValidator(auth_token)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def _authorised(self, request: Request, account: str) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or account != self.account_sid:
            return False
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        return (user, password) == (self.account_sid, self.auth_token)

    def _resource(self, call: PlacedCall, status: str) -> dict:
        return {"sid": call.sid, "account_sid": self.account_sid, "to": call.form.get("To"),
                "from": call.form.get("From"), "status": status, "direction": "outbound-api",
                "api_version": "2010-04-01", "uri": f"{API.format(account=self.account_sid)}/Calls/{call.sid}.json"}

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def outage(request: Request, call_next):
            if self.outage is None:
                return await call_next(request)
            status, content_type, body = self.outage
            return Response(body, status_code=status, media_type=content_type)

        @app.post(API + "/Calls.json")
        async def create(account: str, request: Request):
            if not self._authorised(request, account):
                return _error(401, 20003, "Authenticate")
            raw = await request.form()
            form: dict[str, str | list[str]] = {k: raw.getlist(k) if len(raw.getlist(k)) > 1 else str(raw[k])
                                                for k in raw.keys()}
            for required in ("To", "From"):
                if not form.get(required):
                    return _error(400, 21201 if required == "To" else 21212, f"No '{required}' number is specified")
            if not form.get("Url") and not form.get("Twiml"):
                return _error(400, 21205, "Url parameter is required.")
            call = PlacedCall("CA" + uuid.uuid4().hex, form)
            self.calls.append(call)
            return JSONResponse(self._resource(call, "queued"), status_code=201)

        @app.post(API + "/Calls/{call_sid}.json")
        async def update(account: str, call_sid: str, request: Request):
            if not self._authorised(request, account):
                return _error(401, 20003, "Authenticate")
            form = {k: str(v) for k, v in (await request.form()).items()}
            twiml = form.get("Twiml")
            if twiml is not None:
                try:
                    check_twiml(twiml)
                except TwimlError as exc:
                    return _error(400, 12100, f"Document parse failure: {exc}")
            self.updates.append({"call": call_sid, **form})
            redirect = self.redirects.get(call_sid)
            if twiml is not None and redirect is not None:
                played = redirect(twiml)  # runs on the call's own loop: Twilio's update returns at once
                if self.answer_late is not None:
                    await asyncio.wait_for(asyncio.wrap_future(played), 30)
                    await asyncio.sleep(self.answer_late)
            return {"sid": call_sid, "account_sid": account, "status": form.get("Status", "in-progress")}

        @app.post(API + "/Messages.json")
        async def message(account: str, request: Request):
            if not self._authorised(request, account):
                return _error(401, 20003, "Authenticate")
            form = {k: str(v) for k, v in (await request.form()).items()}
            if not form.get("To"):
                return _error(400, 21604, "A 'To' phone number is required.")
            if not form.get("From") and not form.get("MessagingServiceSid"):
                return _error(400, 21603, "A 'From' phone number is required.")
            if not form.get("Body") and not form.get("MediaUrl"):
                return _error(400, 21602, "Message body is required.")
            self.messages.append(form)
            sid = "SM" + uuid.uuid4().hex
            return JSONResponse({"sid": sid, "account_sid": account, "to": form["To"], "from": form.get("From"),
                                 "body": form["Body"], "status": "queued", "direction": "outbound-api",
                                 "api_version": "2010-04-01", "num_segments": "1",
                                 "uri": f"{API.format(account=account)}/Messages/{sid}.json"}, status_code=201)

        return app

    def __enter__(self) -> FakeTwilioRest:
        from conftest import free_port

        port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(self._app(), host="127.0.0.1", port=port, log_level="warning",
                                                     lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        started = threading.Event()
        while not self._server.started:
            started.wait(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(5)

    # ---- Twilio's side of a placed call

    def _call(self, call_sid: str) -> PlacedCall:
        return next(c for c in self.calls if c.sid == call_sid)

    def _form(self, call: PlacedCall, **extra: str) -> dict[str, str]:
        return {"AccountSid": self.account_sid, "CallSid": call.sid, "From": str(call.form["From"]),
                "To": str(call.form["To"]), "Direction": "outbound-api", "ApiVersion": "2010-04-01", **extra}

    async def wait_url(self, twiml: str, call_sid: str, from_number: str, to_number: str) -> str:
        """The caller waits alone in the ``<Conference>`` of ``twiml``: Twilio posts its ``waitUrl``."""
        conference = check_twiml(twiml).find("Dial/Conference")
        assert conference is not None and conference.get("waitUrl"), f"no <Conference waitUrl> in {twiml}"
        form = {"AccountSid": self.account_sid, "CallSid": call_sid, "From": from_number, "To": to_number,
                "CallStatus": "in-progress", "QueuePosition": "1", "ApiVersion": "2010-04-01"}
        response = await self._post(conference.get("waitUrl", ""), form)
        response.raise_for_status()
        return response.text

    async def _post(self, url: str, form: dict[str, str]) -> httpx.Response:
        signature = self._validator.compute_signature(url, form)
        async with httpx.AsyncClient() as http:
            return await http.post(url, data=form, headers={"X-Twilio-Signature": signature})

    async def status(self, call_sid: str, status: str) -> httpx.Response:
        call = self._call(call_sid)
        return await self._post(str(call.form["StatusCallback"]),
                                self._form(call, CallStatus=status, SequenceNumber=str(len(call.updates))))

    async def answer(self, call_sid: str, answered_by: str | None = None) -> str:
        """The callee picked up: Twilio fetches the call's TwiML (with AMD's verdict when asked for)."""
        call = self._call(call_sid)
        extra = {"CallStatus": "in-progress"}
        if call.form.get("MachineDetection"):
            extra["AnsweredBy"] = answered_by or "human"
        response = await self._post(str(call.form["Url"]), self._form(call, **extra))
        response.raise_for_status()
        return response.text

    async def dial_ended(self, call_sid: str, dial_status: str, *, from_number: str, to_number: str,
                         direction: str = "inbound", duration: int = 0, call_status: str = "in-progress") -> str:
        """The ``<Dial>`` of the TwiML this call was last redirected to ended with ``dial_status``
        (``completed``, ``answered``, ``no-answer``, ``busy``, ``failed``, ``canceled``): Twilio posts its
        ``action`` URL; returns the TwiML the server answered with. ``call_status`` ``completed``: the
        caller hung up, which also ends the dial."""
        twiml = next(u["Twiml"] for u in reversed(self.updates) if u["call"] == call_sid and "Twiml" in u)
        dial = check_twiml(twiml).find("Dial")
        assert dial is not None and dial.get("action"), f"no <Dial action> in {twiml}"
        form = {"AccountSid": self.account_sid, "CallSid": call_sid, "From": from_number, "To": to_number,
                "Direction": direction, "ApiVersion": "2010-04-01", "CallStatus": call_status,
                "DialCallStatus": dial_status}
        if dial_status in ("completed", "answered"):
            form.update(DialCallSid="CA" + uuid.uuid4().hex, DialCallDuration=str(duration))
        response = await self._post(dial.get("action", ""), form)
        response.raise_for_status()
        return response.text

    async def gather(self, call_sid: str, twiml: str, **result: str) -> str:
        """The person answered the ``<Gather>`` in ``twiml`` (the placed call's): ``Digits="1"``,
        ``SpeechResult="Yes."`` (with ``Confidence``), or nothing (its timeout; ``actionOnEmptyResult``).
        Twilio posts the Gather's action; returns the server's TwiML."""
        gather = check_twiml(twiml).find("Gather")
        assert gather is not None and gather.get("action"), f"no <Gather action> in {twiml}"
        if "SpeechResult" in result:
            result.setdefault("Confidence", "0.92")
        response = await self._post(gather.get("action", ""), self._form(self._call(call_sid), CallStatus="in-progress",
                                                                          **result))
        response.raise_for_status()
        return response.text
