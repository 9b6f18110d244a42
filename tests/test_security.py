"""Only Twilio gets in: signatures, stream tokens, caller policy and limits, against the real server.

Every test talks HTTP/WebSocket to a real uvicorn (in a thread, or a real
``voice-bridge serve`` process) and real limit stores (memory, SQLite shared by
two worker processes, a real ``redis-server`` shared by two "hosts").
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
import yaml
from loguru import logger
from twilio.request_validator import RequestValidator

from agent_voice_bridge.pipelines.errors import ConfigError
from agent_voice_bridge.pipelines.loader import load_text
from agent_voice_bridge.security.limits import RedisLimitStore
from agent_voice_bridge.security.stream_tokens import StreamTokens
from agent_voice_bridge.serving import DrainingServer, uvicorn_config
from agent_voice_bridge.transports.simulated_caller import CallSetupError, Pause, Say, WaitQuiet, run_call
from conftest import ECHO_YAML, ROOT, LiveServer, free_port, speech

TOKEN = "tok-SECRET-" + "9f3a7c" * 4
"""A distinctive auth token, so a leak into any log line is easy to spot."""
PUBLIC = "https://public.example"
PIPELINE = yaml.safe_load(ECHO_YAML)["pipeline"]
SPEECH_RMS = 32768 * 10 ** (-40 / 20)


# --------------------------------------------------------------------------- helpers


def bridge_yaml(*, token: str = "", public_url: str | None = None, trust_proxy: bool = False,
                security: dict | None = None, store: str = "memory") -> str:
    """The echo line with the given server/twilio/security settings."""
    server: dict = {"host": "127.0.0.1", "trust_proxy": trust_proxy}
    if public_url:
        server["public_url"] = public_url
    doc = {"server": server, "twilio": {"auth_token": token},
           "security": {"store": store, **(security or {})}, "pipeline": PIPELINE}
    return yaml.safe_dump(doc, sort_keys=False)


class SelfAddressedServer(LiveServer):
    """A LiveServer whose ``server.public_url`` is its own ``http://127.0.0.1:port``."""

    def __init__(self, make_yaml: Callable[[str], str], drain_seconds: float = 5.0):
        port = free_port()
        super().__init__(make_yaml(f"http://127.0.0.1:{port}"), drain_seconds=drain_seconds)
        self.port = port
        self.server = DrainingServer(uvicorn_config(self.app, "127.0.0.1", port), drain_seconds)


def call_form(call_sid: str | None = None, from_number: str = "+15550100001",
              to_number: str = "+15550002222") -> dict[str, str]:
    return {"AccountSid": "AC" + "0" * 32, "ApiVersion": "2010-04-01", "CallSid": call_sid or new_sid(),
            "CallStatus": "ringing", "Direction": "inbound", "From": from_number, "To": to_number,
            "Caller": from_number, "Called": to_number}


def new_sid(prefix: str = "CA") -> str:
    return prefix + uuid.uuid4().hex


def sign(url: str, form: dict[str, str], token: str = TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, form)}


async def post(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> httpx.Response:
    """One webhook POST on a fresh connection."""
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url, data=form, headers=headers or {})


def verbs(response: httpx.Response) -> list[str]:
    """The TwiML verbs of a 200 answer, e.g. ['Connect'], ['Reject'], ['Say', 'Hangup']."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    assert root.tag == "Response"
    return [child.tag for child in root]


def stream_of(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """(``<Stream url>``, its ``<Parameter>``s) of an admitted call."""
    assert verbs(response) == ["Connect"], response.text
    stream = ET.fromstring(response.text).find("Connect/Stream")
    assert stream is not None
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


def heard_seconds(pcm: np.ndarray) -> float:
    n = len(pcm) // 160
    frames = pcm[: n * 160].astype(np.float64).reshape(n, 160)
    return float(np.count_nonzero(np.sqrt((frames**2).mean(axis=1)) > SPEECH_RMS)) * 0.02


def assert_echoed(result) -> None:
    """The legitimate call worked: its utterance came back within a second, and it was real audio."""
    print(result.timeline())
    assert result.utterances, "the caller said nothing"
    latency = result.reply_latencies()[0]
    assert latency <= 2.0, f"echo came {latency:.2f} s after the caller stopped"
    assert heard_seconds(result.heard) >= 0.5, "hardly any echo audio was heard"
    assert result.close_code == 1000
    assert result.events_of("closed")[-1].detail.endswith("by caller")


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every log line (any level, any thread) written while the test runs."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG",
                      format="{level} {name} {message} {extra}")
    yield lines
    logger.remove(sink)


@pytest.fixture(autouse=True)
def token_never_logged(logs: list[str]) -> Iterator[None]:
    yield
    leaks = [line for line in logs if TOKEN in line]
    assert not leaks, f"the auth token was logged: {leaks[:3]}"


@pytest.fixture(scope="module")
def public_server() -> Iterator[LiveServer]:
    """Twilio signs https://public.example/...; the server is reached on 127.0.0.1."""
    with LiveServer(bridge_yaml(token=TOKEN, public_url=PUBLIC)) as server:
        yield server


@pytest.fixture(scope="module")
def signed_server() -> Iterator[LiveServer]:
    """Checks on, public_url = the server's own address, so the simulated caller's signatures match."""
    with SelfAddressedServer(lambda url: bridge_yaml(token=TOKEN, public_url=url)) as server:
        yield server


# --------------------------------------------------------------------------- webhook signatures


async def test_signed_incoming_answers_twiml_with_a_wss_stream_and_a_stream_token(
        public_server: LiveServer, logs: list[str]) -> None:
    form = call_form()
    response = await post(public_server.http_url, form, sign(PUBLIC + "/incoming", form))
    url, params = stream_of(response)
    assert url == "wss://public.example/media-stream"
    assert re.fullmatch(r"\d+\.[A-Za-z0-9_-]{16,}", params["streamToken"]), params
    assert params["callSid"] == form["CallSid"] and params["caller"] == form["From"]
    assert TOKEN not in response.text
    assert any("incoming from" in line and form["CallSid"] in line for line in logs)
    assert not any(params["streamToken"] in line for line in logs), "the stream token was logged"


def _unsigned(form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    return form, {}


def _wrong_token(form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    return form, sign(PUBLIC + "/incoming", form, token="not-the-auth-token")


def _tampered(form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    headers = sign(PUBLIC + "/incoming", form)
    return {**form, "From": "+15559999999"}, headers


def _wrong_url(form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    return form, sign(PUBLIC + "/other", form)


def _garbage(form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    return form, {"X-Twilio-Signature": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}


@pytest.mark.parametrize("forge", [_unsigned, _wrong_token, _tampered, _wrong_url, _garbage],
                         ids=["unsigned", "wrong-token", "tampered", "signed-for-another-url", "garbage"])
async def test_unsigned_wrong_or_tampered_incoming_is_refused_with_403(
        public_server: LiveServer, logs: list[str], forge) -> None:
    form, headers = forge(call_form())
    response = await post(public_server.http_url, form, headers)
    assert response.status_code == 403
    assert "<Response" not in response.text and TOKEN not in response.text
    refusals = [line for line in logs if "bad or missing Twilio signature" in line]
    assert refusals and form["CallSid"] in refusals[-1], "the refusal is logged (without the token)"


@pytest.mark.parametrize("trust_proxy, status", [(False, 403), (True, 200)])
async def test_forwarded_headers_count_only_with_trust_proxy(trust_proxy: bool, status: int) -> None:
    with LiveServer(bridge_yaml(token=TOKEN, trust_proxy=trust_proxy)) as server:
        form = call_form()
        forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.example"}
        response = await post(server.http_url, form, {**forwarded, **sign(PUBLIC + "/incoming", form)})
        assert response.status_code == status
        if trust_proxy:
            url, _ = stream_of(response)
            assert url == "wss://public.example/media-stream"
        else:
            # Control: signed for the URL it really arrived at, the same request is accepted, so the
            # 403 above came from ignoring the untrusted headers.
            form = call_form()
            direct = await post(server.http_url, form, {**forwarded, **sign(server.http_url, form)})
            url, _ = stream_of(direct)
            assert url == f"ws://127.0.0.1:{server.port}/media-stream"


# --------------------------------------------------------------------------- stream tokens


@dataclass
class Refused:
    code: int | None
    seconds: float
    messages: list[str] = field(default_factory=list)


def start_message(call_sid: str, params: dict[str, str]) -> str:
    sid = new_sid("MZ")
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
        "accountSid": "AC" + "0" * 32, "streamSid": sid, "callSid": call_sid, "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": params}})


async def open_stream(url: str, call_sid: str, params: dict[str, str], media_frames: int = 10) -> Refused:
    """connected + start (+ a few frames of real-time-sized media); wait for the server to close."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(start_message(call_sid, params))
        began = time.monotonic()
        silence = "/" * 216
        messages: list[str] = []
        try:
            for i in range(media_frames):
                await ws.send(json.dumps({"event": "media", "sequenceNumber": str(i + 2), "media": {
                    "track": "inbound", "chunk": str(i + 1), "timestamp": str(i * 20), "payload": silence}}))
            while True:
                messages.append(await asyncio.wait_for(ws.recv(), 5))
        except websockets.ConnectionClosed:
            pass
        return Refused(ws.close_code, time.monotonic() - began, messages)


async def stream_params(server: LiveServer, call_sid: str) -> dict[str, str]:
    """The ``<Parameter>``s a signed ``/incoming`` answers for this call (caller, callee, token…)."""
    form = call_form(call_sid)
    _, params = stream_of(await post(server.http_url, form, sign(server.http_url, form)))
    return params


async def stream_token(server: LiveServer, call_sid: str) -> str:
    return (await stream_params(server, call_sid))["streamToken"]


async def _no_token(server: LiveServer, sid: str) -> dict[str, str]:
    return {}


async def _forged(server: LiveServer, sid: str) -> dict[str, str]:
    return {"streamToken": f"{int(time.time()) + 60}.{'A' * 32}"}


async def _other_calls_token(server: LiveServer, sid: str) -> dict[str, str]:
    return {"streamToken": await stream_token(server, new_sid())}


async def _expired(server: LiveServer, sid: str) -> dict[str, str]:
    # Issued with the server's own secret two minutes ago (valid MAC, expiry in the past).
    return {"streamToken": StreamTokens(TOKEN, 60, clock=lambda: time.time() - 120).issue(sid)}


async def _replayed(server: LiveServer, sid: str) -> dict[str, str]:
    params = await stream_params(server, sid)  # the token is bound to the caller and callee beside it
    before = server.calls.finished
    first = await run_call(server.ws_url, [Pause(0.2)], call_sid=sid, custom_parameters=params)
    assert first.close_code == 1000 and first.events_of("closed")[-1].detail.endswith("by caller")
    await asyncio.to_thread(server.wait_idle, before + 1)  # the first use really ran as a call
    return params


@pytest.mark.parametrize("make_params, reason", [
    (_no_token, "no stream token"),
    (_forged, "does not match the call"),
    (_other_calls_token, "does not match the call"),
    (_expired, "stream token expired"),
    (_replayed, "already used"),
], ids=["missing", "forged", "other-calls-token", "expired", "replayed"])
async def test_stream_without_a_valid_token_is_closed_1008_within_2s_with_no_audio(
        signed_server: LiveServer, logs: list[str], make_params, reason: str) -> None:
    sid = new_sid()
    params = await make_params(signed_server, sid)
    refused_before, finished_before = signed_server.calls.refused, signed_server.calls.finished
    outcome = await open_stream(signed_server.ws_url, sid, params)
    print(f"closed with {outcome.code} after {outcome.seconds * 1000:.0f} ms")
    assert outcome.code == 1008
    assert outcome.seconds < 2.0
    assert outcome.messages == [], "nothing at all, let alone audio, is sent to a refused stream"
    assert signed_server.calls.refused == refused_before + 1
    assert signed_server.calls.finished == finished_before, "no call (pipeline) was started"
    assert any("refused" in line and reason in line for line in logs)
    if params.get("streamToken"):
        assert not any(params["streamToken"] in line for line in logs)


@pytest.mark.parametrize("changed", [
    {"caller": "+15550109999"},
    {"callee": "+15550109999"},
    {"caller": ""},
], ids=["other-caller", "other-callee", "caller-dropped"])
async def test_a_valid_token_with_another_caller_or_callee_is_closed_1008(
        signed_server: LiveServer, logs: list[str], changed: dict[str, str]) -> None:
    # The caller and callee feed the AI's instructions and the caller's memory: a stream that keeps
    # /incoming's token but claims another number must not get that number's memory.
    sid = new_sid()
    params = await stream_params(signed_server, sid)
    assert params["caller"] == call_form()["From"] and params["callee"] == call_form()["To"]
    from agent_voice_bridge import metrics
    token_refusals = metrics.REFUSED.labels("stream_token")
    refused_before, finished_before = signed_server.calls.refused, signed_server.calls.finished
    counted_before = token_refusals._value.get()
    outcome = await open_stream(signed_server.ws_url, sid, {**params, **changed})
    assert outcome.code == 1008
    assert outcome.messages == []
    assert signed_server.calls.refused == refused_before + 1
    assert token_refusals._value.get() == counted_before + 1
    assert signed_server.calls.finished == finished_before, "no call (pipeline) was started"
    assert any("refused" in line and "does not match the call" in line for line in logs)
    # The same token with /incoming's own parameters was not spent by the refused stream: it still works.
    result = await run_call(signed_server.ws_url, [Pause(0.2)], call_sid=sid, custom_parameters=params)
    assert result.close_code == 1000, result.timeline()


async def test_signed_call_through_incoming_and_token_reaches_the_echo(signed_server: LiveServer) -> None:
    result = await run_call(signed_server.http_url, [Pause(0.3), Say(speech("hello-world")), WaitQuiet(idle=0.8)],
                            auth_token=TOKEN)
    assert "streamToken" in result.custom_parameters
    assert_echoed(result)


async def test_handshake_signature_when_check_ws_signature_is_on(logs: list[str]) -> None:
    make = lambda url: bridge_yaml(token=TOKEN, public_url=url, security={"check_ws_signature": True})  # noqa: E731
    with SelfAddressedServer(make) as server:
        # Unsigned, and signed with the wrong token: the handshake itself is refused (403, no socket).
        for headers in ({}, {"X-Twilio-Signature": RequestValidator("wrong").compute_signature(server.ws_url, {})}):
            with pytest.raises(CallSetupError) as refused:
                await run_call(server.ws_url, [Pause(0.2)], ws_headers=headers)
            assert refused.value.status == 403
        assert server.calls.refused == 2
        assert any("handshake: bad or missing Twilio signature" in line for line in logs)
        # The whole signed flow (webhook, then signed handshake, then token) works.
        result = await run_call(server.http_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=0.8)],
                                auth_token=TOKEN)
        assert_echoed(result)
        assert server.calls.refused == 2


async def test_without_an_auth_token_the_checks_are_off() -> None:
    with LiveServer(bridge_yaml()) as server:
        response = await post(server.http_url, call_form())
        _, params = stream_of(response)
        assert "streamToken" not in params
        result = await run_call(server.ws_url, [Pause(0.3), Say(speech("hello-world")), WaitQuiet(idle=0.8)])
        assert_echoed(result)


def test_check_signatures_without_an_auth_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as error:
        load_text(bridge_yaml(security={"check_signatures": True}), "strict.yaml")
    assert "auth_token" in str(error.value)


async def test_checks_can_be_turned_off_explicitly_even_with_a_token() -> None:
    with LiveServer(bridge_yaml(token=TOKEN, security={"check_signatures": False})) as server:
        _, params = stream_of(await post(server.http_url, call_form()))
        assert "streamToken" not in params


# --------------------------------------------------------------------------- who may call


async def test_allowlist_and_blocklist_use_normalised_numbers() -> None:
    security = {"allowlist": ["+1 (555) 010-0001", "+15550100003"], "blocklist": ["+1-555-010-0003"]}
    with LiveServer(bridge_yaml(token=TOKEN, public_url=PUBLIC, security=security)) as server:
        async def verdict(number: str) -> list[str]:
            form = call_form(from_number=number)
            return verbs(await post(server.http_url, form, sign(PUBLIC + "/incoming", form)))

        assert await verdict("+1 (555) 010-0001") == ["Connect"]    # allowlisted, written differently
        assert await verdict("+1 555 010 0001") == ["Connect"]
        assert await verdict("+15550100002") == ["Reject"]          # not on the allowlist
        assert await verdict("+15550100003") == ["Reject"]          # allowlisted but also blocked
        assert await verdict("") == ["Reject"]                      # anonymous caller
        assert await verdict("+266696687") == ["Reject"]            # Twilio's ANONYMOUS
        # Identities that merely contain an allowlisted number's digits are not that number.
        assert await verdict("client:mallory15550100001") == ["Reject"]
        assert await verdict("sip:+15550100001@attacker.example") == ["Reject"]
        assert await verdict("15550100001") == ["Reject"]           # Twilio writes PSTN callers in E.164


def test_allowlist_entries_must_be_phone_numbers() -> None:
    from agent_voice_bridge.pipelines.errors import ConfigError
    from agent_voice_bridge.pipelines.loader import load_text

    with pytest.raises(ConfigError) as raised:
        load_text(bridge_yaml(security={"allowlist": ["+15550100001", "1-555-010-0003", "sip:bob@x"]}), "lines.yaml")
    assert "not E.164 phone numbers: '1-555-010-0003', 'sip:bob@x'" in str(raised.value)


async def test_blocklist_alone_rejects_only_the_blocked_number() -> None:
    with LiveServer(bridge_yaml(security={"blocklist": ["+1 (555) 010-0001"]})) as server:
        assert verbs(await post(server.http_url, call_form(from_number="+1 555 010 0001"))) == ["Reject"]
        assert verbs(await post(server.http_url, call_form(from_number="+15550100002"))) == ["Connect"]


async def test_rate_limit_refuses_the_sixth_call_from_one_number_only() -> None:
    with LiveServer(bridge_yaml(security={"rate_limit": {"calls": 5, "per_seconds": 60}})) as server:
        answers = [verbs(await post(server.http_url, call_form(from_number="+15550100001"))) for _ in range(6)]
        assert answers[:5] == [["Connect"]] * 5
        assert answers[5] == ["Say", "Hangup"]
        assert verbs(await post(server.http_url, call_form(from_number="+15550100002"))) == ["Connect"]
        # Formatting the number differently does not dodge the limit.
        assert verbs(await post(server.http_url, call_form(from_number="+1 (555) 010-0001"))) == ["Say", "Hangup"]
        # A SIP identity carrying the same digits is its own caller, limited on its own.
        assert verbs(await post(server.http_url, call_form(from_number="sip:15550100001@x.example"))) == ["Connect"]


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_max_concurrent_calls_refuses_a_second_call_until_the_first_ends() -> None:
    with LiveServer(bridge_yaml(security={"max_concurrent_calls": 1})) as server:
        first = asyncio.create_task(run_call(
            server.http_url, [Pause(0.3), Say(speech("hello-world")), WaitQuiet(idle=0.8)],
            from_number="+15550100001"))
        await wait_for(lambda: bool(server.calls.live) or first.done(), 10, "the first call to go live")
        second = await post(server.http_url, call_form(from_number="+15550100002"))
        assert verbs(second) == ["Say", "Hangup"]
        # A stream that skips /incoming is refused on start too.
        sneaky = await open_stream(server.ws_url, new_sid(), {})
        assert sneaky.code == 1008 and sneaky.messages == []
        assert_echoed(await first)
        await asyncio.to_thread(server.wait_idle, 1)
        assert verbs(await post(server.http_url, call_form(from_number="+15550100002"))) == ["Connect"]


# --------------------------------------------------------------------------- across worker processes


class ServeProcess:
    """``voice-bridge serve`` as a real subprocess; always terminated by ``stop``."""

    def __init__(self, config: Path, port: int, *args: str, env: dict[str, str] | None = None):
        self.port = port
        self.log = config.with_suffix(".log")
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "voice-bridge"), "serve", "-c", str(config), "--port", str(port), *args],
            stdout=self._log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=config.parent,
            start_new_session=True)  # its own process group, so its workers can be ended with it

    verify: bool | ssl.SSLContext = True
    """What the readiness probe trusts (a subclass serving TLS passes its CA)."""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.base + "/healthz", timeout=1, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not come up:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGINT (each worker drains, then exits); SIGKILL to the whole process group if that hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if not self._log_file.closed:
            self._log_file.close()


async def test_rate_limit_holds_across_two_worker_processes(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(bridge_yaml(store=f"sqlite:///{tmp_path}/limits.sqlite",
                                  security={"rate_limit": {"calls": 5, "per_seconds": 60}}))
    # {process} in every log line tells which worker handled which request.
    server = ServeProcess(config, free_port(), "--workers", "2",
                          env={"LOGURU_FORMAT": "pid={process} | {level} | {name} | {message}"})
    clients: list[httpx.AsyncClient] = []
    try:
        await asyncio.to_thread(server.wait_ready)
        # Fresh connections until each worker holds one (kept alive, so later requests stay on it).
        pids: dict[int, httpx.AsyncClient] = {}
        deadline = time.monotonic() + 20
        while len(pids) < 2:
            assert time.monotonic() < deadline, f"only worker(s) {list(pids)} ever answered"
            client = httpx.AsyncClient(base_url=server.base, timeout=10,
                                       limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
            clients.append(client)
            pid = (await client.get("/healthz")).json()["pid"]
            pids.setdefault(pid, client)
        assert server.proc.pid not in pids, "requests are served by worker processes, not the supervisor"
        workers = list(pids.items())
        answers, served_by = [], []
        for i in range(6):  # alternate the workers: each sees only 3 of the 6 calls
            pid, client = workers[i % 2]
            assert (await client.get("/healthz")).json()["pid"] == pid
            form = call_form(from_number="+15550100001")
            answers.append(verbs(await client.post("/incoming", data=form)))
            served_by.append((form["CallSid"], pid))
        assert answers[:5] == [["Connect"]] * 5
        assert answers[5] == ["Say", "Hangup"], "the 6th call in a minute is refused across workers"
        other = await workers[1][1].post("/incoming", data=call_form(from_number="+15550100002"))
        assert verbs(other) == ["Connect"]
        # The logs confirm which worker process answered each call.
        log = await asyncio.to_thread(server.output)
        for call_sid, pid in served_by:
            assert re.search(rf"pid={pid} \|.*call {call_sid}: (incoming|refused)", log), (call_sid, pid)
        assert len({pid for _, pid in served_by}) == 2
        for client in clients:
            await client.aclose()
        await asyncio.to_thread(server.stop)
        assert server.proc.returncode == 0, "SIGINT: the workers drain and the supervisor exits cleanly"
    finally:
        for client in clients:
            await client.aclose()
        await asyncio.to_thread(server.stop)


# --------------------------------------------------------------------------- across hosts (Redis)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does): cross-host limits "
                    "untested")
    import redis

    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_two_redis_stores_share_limits(redis_url: str) -> None:
    prefix = f"{uuid.uuid4().hex}:"
    host_a, host_b = RedisLimitStore(redis_url, prefix), RedisLimitStore(redis_url, prefix)
    try:
        hits = [await (host_a if i % 2 else host_b).hit("caller:+15550100001", 5, 60) for i in range(6)]
        assert hits == [True] * 5 + [False]
        assert not await host_a.hit("caller:+15550100001", 5, 60)
        assert await host_b.hit("caller:+15550100002", 5, 60)
        assert await host_a.claim_call("CA1", 1, 60)
        assert await host_a.claim_call("CA1", 1, 60), "renewing one's own slot is fine"
        assert not await host_b.claim_call("CA2", 1, 60)
        await host_a.release_call("CA1")
        assert await host_b.claim_call("CA2", 1, 60)
        expires = time.time() + 30
        assert await host_a.use_once("token-1", expires)
        assert not await host_b.use_once("token-1", expires)
    finally:
        await host_a.close()
        await host_b.close()


@contextmanager
def redis_hosts(redis_url: str, security: dict) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers ("hosts") with their own RedisLimitStore on one Redis."""
    prefix = f"{uuid.uuid4().hex}:"
    servers = [LiveServer(bridge_yaml(security=security), store=RedisLimitStore(redis_url, prefix)) for _ in range(2)]
    with servers[0] as a, servers[1] as b:
        try:
            yield a, b
        finally:
            for server in (a, b):
                assert server.loop is not None
                asyncio.run_coroutine_threadsafe(server.app.state.gate.store.close(), server.loop).result(5)


async def test_rate_limit_holds_across_two_hosts_sharing_redis(redis_url: str) -> None:
    with redis_hosts(redis_url, {"rate_limit": {"calls": 5, "per_seconds": 60}}) as (a, b):
        answers = [verbs(await post((a, b)[i % 2].http_url, call_form(from_number="+15550100001")))
                   for i in range(6)]
        assert answers[:5] == [["Connect"]] * 5
        assert answers[5] == ["Say", "Hangup"]
        assert verbs(await post(a.http_url, call_form(from_number="+15550100001"))) == ["Say", "Hangup"]
        assert verbs(await post(b.http_url, call_form(from_number="+15550100002"))) == ["Connect"]


async def test_max_concurrent_calls_holds_across_two_hosts_sharing_redis(redis_url: str) -> None:
    with redis_hosts(redis_url, {"max_concurrent_calls": 1}) as (a, b):
        first = asyncio.create_task(run_call(
            a.http_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=0.8)], from_number="+15550100001"))
        await wait_for(lambda: bool(a.calls.live) or first.done(), 10, "the call on host A to go live")
        assert verbs(await post(b.http_url, call_form(from_number="+15550100002"))) == ["Say", "Hangup"]
        sneaky = await open_stream(b.ws_url, new_sid(), {})
        assert sneaky.code == 1008 and sneaky.messages == []
        assert_echoed(await first)
        await asyncio.to_thread(a.wait_idle, 1)
        # Host A released the slot in Redis as the call ended: host B takes calls again.
        deadline = time.monotonic() + 5
        while (answer := verbs(await post(b.http_url, call_form(from_number="+15550100002")))) != ["Connect"]:
            assert time.monotonic() < deadline, f"host B still refuses after the call on A ended: {answer}"
            await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- browsers: DNS rebinding, Origin


@pytest.fixture(scope="module")
def dev_server() -> Iterator[LiveServer]:
    """No auth token, no API key: development mode, the softphone on without a key."""
    with LiveServer(bridge_yaml()) as server:
        yield server


async def get(url: str, host: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, headers={"Host": host} if host else {})


EVIL_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "[::2]:{port}"]
LOOPBACK_HOSTS = ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}", "[::1]"]


@pytest.mark.parametrize("path, status", [("/phone", 200), ("/phone/token", 200), ("/phone/pipelines", 200),
                                          ("/phone/static/phone.js", 200), ("/calls", 403)])
async def test_development_server_answers_browser_paths_only_on_loopback_hosts(
        dev_server: LiveServer, logs: list[str], path: str, status: int) -> None:
    # A rebinding page (evil.example now resolving to 127.0.0.1) would read /phone/token and place calls.
    assert dev_server.app.state.gate.mode == "development"
    url = f"http://127.0.0.1:{dev_server.port}{path}"
    for host in EVIL_HOSTS:
        response = await get(url, host.format(port=dev_server.port))
        assert response.status_code == 421, (host, response.text)
        assert "localhost" in response.text
    assert any("refused Host" in line for line in logs)
    for host in LOOPBACK_HOSTS:  # …while every loopback name, with or without a port, still works
        assert (await get(url, host.format(port=dev_server.port))).status_code == status, host


async def test_development_server_with_a_public_url_answers_its_public_host() -> None:
    with LiveServer(bridge_yaml(public_url="http://voice.example.test:8080")) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert (await get(f"{base}/phone", "voice.example.test:8080")).status_code == 200
        assert (await get(f"{base}/phone", "other.example.test:8080")).status_code == 421
        # Twilio's webhook is not a browser path: a development server behind a tunnel gets it under any name.
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{base}/incoming", data=call_form(), headers={"Host": "abc.ngrok.example"})
        assert verbs(response) == ["Connect"]


@pytest.mark.parametrize("origin", ["https://evil.example", "http://evil.example:{port}", "null",
                                    "http://127.0.0.1:1", "http://localhost.evil.example:{port}"])
async def test_a_stream_from_another_sites_page_is_refused_at_the_handshake(
        dev_server: LiveServer, signed_server: LiveServer, logs: list[str], origin: str) -> None:
    from agent_voice_bridge import metrics

    for server in (dev_server, signed_server):
        refused, counted = server.calls.refused, metrics.REFUSED.labels("origin")._value.get()
        with pytest.raises(CallSetupError) as refusal:
            await run_call(server.ws_url, [Pause(0.2)], ws_headers={"Origin": origin.format(port=server.port)})
        assert refusal.value.status == 403
        assert server.calls.refused == refused + 1
        assert metrics.REFUSED.labels("origin")._value.get() == counted + 1
    assert any("refused Origin" in line for line in logs)


async def handshake_status(server: LiveServer, host: str, origin: str) -> int:
    """The HTTP status of a ``/media-stream`` handshake sent to the server as ``Host: host`` (101: accepted)."""
    sock = socket.create_connection(("127.0.0.1", server.port))  # the name need not resolve: a rebound one
    try:
        async with websockets.connect(f"ws://{host}/media-stream", sock=sock, origin=origin, proxy=None):
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


async def test_only_the_softphones_own_page_and_twilio_open_streams(
        dev_server: LiveServer, signed_server: LiveServer) -> None:
    # A rebinding page: same origin as its request, but for a name development mode does not serve.
    host = f"evil.example:{dev_server.port}"
    assert await handshake_status(dev_server, host, f"http://{host}") == 403
    for host in (f"localhost:{dev_server.port}", f"[::1]:{dev_server.port}"):
        assert await handshake_status(dev_server, host, f"http://{host}") == 101
    # Development: the page on 127.0.0.1, no token needed.
    result = await run_call(dev_server.ws_url, [Pause(0.2)],
                            ws_headers={"Origin": f"http://127.0.0.1:{dev_server.port}"})
    assert result.close_code == 1000, result.timeline()
    # Production: the public_url's origin passes the handshake; the stream token still decides.
    sid = new_sid()
    params = await stream_params(signed_server, sid)
    result = await run_call(signed_server.ws_url, [Pause(0.2)], call_sid=sid, custom_parameters=params,
                            ws_headers={"Origin": f"http://127.0.0.1:{signed_server.port}"})
    assert result.close_code == 1000, result.timeline()
    # Twilio: no Origin at all.
    result = await run_call(signed_server.http_url, [Pause(0.2)], auth_token=TOKEN)
    assert result.close_code == 1000, result.timeline()
