"""Outbound calls through the real server: the REST request Twilio gets, its webhooks, the answered call.

Twilio is the fake in ``fakes/twilio_rest.py`` (the ``twilio`` client pointed at it);
the answered call is played by the simulated caller from the TwiML the server gave.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agent_voice_bridge.cli import main as cli_main
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard, WaitQuiet, parse_twiml, run_call
from conftest import LiveServer, free_port, run_cli, speech
from fakes.openai_realtime import FakeOpenAIRealtime
from fakes.twilio_rest import FakeTwilioRest

ACCOUNT, TOKEN, OUR_NUMBER, CALLEE = "ACtest00000000000000000000000000", "s3cret-token", "+15550100000", "+15557654321"
API_KEY = "dial-key"


def outbound_yaml(port: int, twilio: FakeTwilioRest, fake: FakeOpenAIRealtime, tmp_path: Path, *,
                  extra: str = "") -> str:
    return (f"server: {{public_url: 'http://127.0.0.1:{port}', api_key: {API_KEY}}}\n"
            f"twilio: {{account_sid: {ACCOUNT}, auth_token: {TOKEN}, phone_number: '{OUR_NUMBER}', "
            f"api_base_url: '{twilio.url}'}}\n"
            f"storage: {{url: 'sqlite:///{tmp_path}/calls.db'}}\n{extra}"
            "pipeline:\n  - twilio.input\n  - openai.realtime:\n      api_key: test-key\n"
            f"      base_url: {fake.url}\n      audio_format: pcmu\n"
            "      instructions: 'You are calling {callee} about {reason}.'\n  - twilio.output\n")


async def test_dial_places_the_call_and_the_answered_call_runs_the_chain_with_its_parameters(tmp_path: Path) -> None:
    port = free_port()
    async with FakeOpenAIRealtime(reply_seconds=1.0) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            yaml_text = outbound_yaml(port, twilio, fake, tmp_path)
            config = tmp_path / "outbound.yaml"
            config.write_text(yaml_text)
            with LiveServer(yaml_text, str(config), port=port) as server:
                assert await run_cli("dial", CALLEE, "-c", str(config), "--param", "reason=your dentist appointment") == 0
                placed, = twilio.calls
                queued = server.db(CallStore.get_call, placed.sid)
                assert (await twilio.status(placed.sid, "ringing")).status_code == 204
                ringing = server.db(CallStore.get_call, placed.sid)
                stream_url, parameters = parse_twiml(await twilio.answer(placed.sid, "human"))
                result = await run_call(stream_url, [Pause(0.3), Say(speech("hello-world")), WaitHeard(),
                                                     WaitQuiet(idle=0.8)], call_sid=placed.sid,
                                        custom_parameters=parameters)
                server.wait_idle(finished=1)
                await twilio.status(placed.sid, "completed")
                record = server.db(CallStore.get_call, placed.sid)
        session = fake.sessions[0]
    assert placed.form == {
        "To": CALLEE, "From": OUR_NUMBER, "Method": "POST",
        "Url": f"http://127.0.0.1:{port}/outbound?reason=your+dentist+appointment",
        "StatusCallback": f"http://127.0.0.1:{port}/status", "StatusCallbackMethod": "POST",
        "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"],
        "MachineDetection": "DetectMessageEnd"}
    assert (queued.direction, queued.caller, queued.callee, queued.status) == ("outbound", OUR_NUMBER, CALLEE, "queued")
    assert ringing.status == "ringing"
    assert parameters["reason"] == "your dentist appointment" and parameters["answeredBy"] == "human"
    assert "streamToken" in parameters, "the answered call's stream is checked like an inbound one"
    assert session.config["instructions"] == f"You are calling {CALLEE} about your dentist appointment."
    assert result.reply_latencies()[0] < 3.0  # no reply (nan) fails; a busy box's headroom
    assert (record.direction, record.status, record.outcome) == ("outbound", "completed", "caller_hung_up")
    assert record.parameters["reason"] == "your dentist appointment"


async def test_a_machine_gets_the_message_and_the_api_needs_its_key(tmp_path: Path) -> None:
    port = free_port()
    async with FakeOpenAIRealtime() as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            extra = "outbound: {on_machine: {say: 'This is the clinic. Please call us back.'}}\n"
            with LiveServer(outbound_yaml(port, twilio, fake, tmp_path, extra=extra), port=port) as server:
                base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=base) as http:
                    refused = await http.post("/calls", json={"to": CALLEE})
                    bad = await http.post("/calls", json={"to": "call me"}, headers={"X-API-Key": API_KEY})
                    reserved = await http.post("/calls", json={"to": CALLEE, "parameters": {"callSid": "x"}},
                                               headers={"X-API-Key": API_KEY})
                    placed = await http.post("/calls", json={"to": CALLEE, "parameters": {"reason": "a reminder"}},
                                             headers={"X-API-Key": API_KEY})
                    unsigned = await http.post("/status", data={"CallSid": placed.json()["call_sid"],
                                                                "CallStatus": "failed"})
                sid = placed.json()["call_sid"]
                twiml = await twilio.answer(sid, "machine_end_beep")
                await twilio.status(sid, "completed")
                record = server.db(CallStore.get_call, sid)
    assert refused.status_code == 401 and bad.status_code == 400 and reserved.status_code == 400
    assert placed.status_code == 201 and placed.json()["status"] == "queued"
    assert len(twilio.calls) == 1, "refused requests never reached Twilio"
    assert unsigned.status_code == 403
    assert "<Say>This is the clinic. Please call us back.</Say><Hangup" in twiml and "<Connect" not in twiml
    assert (record.outcome, record.reason, record.status) == ("left_message", "answered by machine_end_beep",
                                                              "completed")
    assert fake.sessions == [], "a machine never reaches the AI"


@pytest.mark.parametrize("status", ["busy", "no-answer", "failed"])
async def test_status_callbacks_record_a_call_that_never_connected(tmp_path: Path, status: str) -> None:
    port = free_port()
    async with FakeOpenAIRealtime() as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            with LiveServer(outbound_yaml(port, twilio, fake, tmp_path), port=port) as server:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    sid = (await http.post("/calls", json={"to": CALLEE}, headers={"X-API-Key": API_KEY})).json()
                sid = sid["call_sid"]
                await twilio.status(sid, "ringing")
                await twilio.status(sid, status)
                record = server.db(CallStore.get_call, sid)
    expected = status.replace("-", "_")
    assert (record.status, record.outcome) == (expected, expected) and record.ended_at is not None


def test_dial_says_what_the_configuration_lacks(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bare.yaml"
    config.write_text("pipeline: [twilio.input, echo, twilio.output]\n"
                      f"storage: {{url: 'sqlite:///{tmp_path}/calls.db'}}\n")
    assert cli_main(["dial", CALLEE, "-c", str(config)]) == 1
    error = capsys.readouterr().err
    assert "twilio.account_sid" in error and "server.public_url" in error


async def answered_call(tmp_path: Path, steps: list, *, first_turn: str) -> tuple:
    """Dial, answer as a person, run ``steps``; returns (result, OpenAI session)."""
    port = free_port()
    async with FakeOpenAIRealtime(reply_seconds=2.0) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            extra = f"outbound: {{first_turn: {first_turn}, hello_timeout_secs: 1.5, machine_detection: false}}\n"
            yaml_text = outbound_yaml(port, twilio, fake, tmp_path, extra=extra).replace(
                "      audio_format: pcmu\n", "      audio_format: pcmu\n      greeting: 'Hi, this is the clinic.'\n")
            with LiveServer(yaml_text, port=port) as server:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    sid = (await http.post("/calls", json={"to": CALLEE, "parameters": {"reason": "a reminder"}},
                                           headers={"X-API-Key": API_KEY})).json()["call_sid"]
                stream_url, parameters = parse_twiml(await twilio.answer(sid))
                result = await run_call(stream_url, steps, call_sid=sid, custom_parameters=parameters)
                server.wait_idle(finished=1)
        session = fake.sessions[0]
    print(result.timeline())
    return result, session


def greeting_prompts(session) -> list:
    return [e for e in session.events if e["type"] == "conversation.item.create" and "Greet the caller" in str(e)]


async def test_the_callees_hello_never_cuts_off_the_opening_line(tmp_path: Path) -> None:
    steps = [Pause(0.2), Say(speech("hello-world")), WaitHeard(), WaitQuiet(idle=0.8)]
    result, session = await answered_call(tmp_path, steps, first_turn="wait_for_hello")
    hello_end = result.utterances[0][1]
    assert result.clears == [], "nothing was interrupted"
    assert min(e.t for e in result.events_of("audio_start")) >= hello_end, "the AI spoke after the hello"
    assert greeting_prompts(session) == [], "it answered the hello instead of reading its greeting over it"


async def test_a_silent_callee_is_greeted_after_the_hello_timeout(tmp_path: Path) -> None:
    result, session = await answered_call(tmp_path, [WaitHeard(timeout=5), WaitQuiet(idle=0.6)],
                                          first_turn="wait_for_hello")
    first = min(e.t for e in result.events_of("audio_start"))
    assert 1.5 <= first <= 2.5, first
    assert len(greeting_prompts(session)) == 1


async def test_greeting_at_once_is_what_gets_cut_off_without_waiting(tmp_path: Path) -> None:
    """The problem wait_for_hello solves: greeting at once, the callee's hello barges into it."""
    steps = [Pause(0.4), Say(speech("hello-world")), WaitQuiet(idle=0.8)]
    result, session = await answered_call(tmp_path, steps, first_turn="greet")
    assert len(greeting_prompts(session)) == 1
    assert min(e.t for e in result.events_of("audio_start")) < result.utterances[0][0]
    assert len(result.clears) == 1, "the hello cut the greeting off"


async def test_gemini_also_waits_for_the_hello_then_greets_a_silent_callee() -> None:
    from fakes.gemini_live import FakeGeminiLive, GeminiScript
    from test_gemini_call import chain_yaml

    async with FakeGeminiLive(script=GeminiScript()) as fake:
        yaml_text = ("outbound: {hello_timeout_secs: 1.5}\n"
                     + chain_yaml(fake, turn_detection="local", greeting="Hi, this is the clinic."))
        with LiveServer(yaml_text) as server:
            result = await run_call(server.ws_url, [WaitHeard(timeout=5), WaitQuiet(idle=0.6)],
                                    custom_parameters={"direction": "outbound", "topic": "a reminder"})
        session = fake.sessions[-1]
    print(result.timeline())
    first = min(e.t for e in result.events_of("audio_start"))
    assert 1.5 <= first <= 3.0, first
    greeting_turns = [c for c in session.client_contents if "Greet the caller" in str(c)]
    assert len(greeting_turns) >= 1 and any(c.get("turnComplete") for c in session.client_contents)


async def test_the_api_says_what_the_configuration_lacks() -> None:
    from conftest import ECHO_YAML

    with LiveServer(ECHO_YAML.replace("server:\n", f"security: {{mode: development}}\nserver:\n  api_key: {API_KEY}\n", 1)) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            answer = await http.post("/calls", json={"to": CALLEE}, headers={"X-API-Key": API_KEY})
    assert answer.status_code == 503
    assert "twilio.account_sid" in answer.json()["detail"] and "server.public_url" in answer.json()["detail"]


TWILIO_ERROR = '{"code": 20500, "message": "Internal Server Error", "more_info": "https://www.twilio.com/docs/errors/20500", "status": 500}'


@pytest.mark.parametrize("outage, status, said", [
    ("connection refused", 503, "Connection refused"),
    ("no answer", 503, "no answer within 0.5 s"),
    ((503, "text/html", "<html><body><h1>503 Service Unavailable</h1></body></html>"), 502, "HTTP 503"),
    ((500, "application/json", TWILIO_ERROR), 502, "HTTP 500 Unable to create record: Internal Server Error (error 20500)"),
    ((429, "application/json", TWILIO_ERROR.replace("500", "429")), 502, "HTTP 429"),
], ids=["refused", "no-answer", "503-html", "500-json", "429"])
async def test_dialling_when_twilio_is_down_is_a_clear_error_in_one_log_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outage, status: int, said: str) -> None:
    import socket

    from loguru import logger

    from agent_voice_bridge.transports import twilio_rest

    monkeypatch.setattr(twilio_rest, "TWILIO_TIMEOUT_SECS", 0.5, raising=False)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{level} {message}\n{exception}")
    port = free_port()
    with socket.socket() as silent, FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connects (the backlog accepts), never answers
        if outage == "connection refused":
            twilio.url = f"http://127.0.0.1:{free_port()}"
        elif outage == "no answer":
            twilio.url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        else:
            twilio.outage = outage
        async with FakeOpenAIRealtime() as fake:
            with LiveServer(outbound_yaml(port, twilio, fake, tmp_path), port=port) as server:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                    answer = await http.post("/calls", json={"to": CALLEE}, headers={"X-API-Key": API_KEY})
                stored = server.db(CallStore.recent_calls, 10)
    logger.remove(sink)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert said in detail and "\n" not in detail and "\x1b" not in detail, detail
    assert "Twilio" in detail
    logged = [line for line in lines if "dialling failed" in line]
    assert len(logged) == 1 and said in logged[0], lines
    assert not any("Traceback" in line for line in lines)
    assert not any(TOKEN in line for line in lines), "the auth token never reaches the log"
    assert stored == [] and twilio.calls == []
