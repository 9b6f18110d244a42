"""Cold transfer: the AI's ``transfer`` tool redirects the live call to dial a person (Twilio REST + TwiML).

Twilio is the fake in ``fakes/twilio_rest.py`` (the ``twilio`` client pointed at it; it
checks the TwiML against the SDK's model and posts the ``<Dial action>`` the test asks
for); the models are the Gemini Live and OpenAI Realtime fakes; the caller is the
simulated caller over a real WebSocket, on both legs of a call that comes back.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent_voice_bridge.pipelines.chain import build_chain
from agent_voice_bridge.pipelines.errors import ConfigError
from agent_voice_bridge.pipelines.loader import load_text
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.storage.report import call_report
from agent_voice_bridge.transports.simulated_caller import (
    CallResult,
    Dtmf,
    Pause,
    Say,
    Until,
    WaitHeard,
    WaitQuiet,
    parse_twiml,
    run_call,
)
from conftest import LiveServer, free_port, speech
from fakes.gemini_live import FakeGeminiLive, GeminiScript
from fakes.openai_realtime import FakeOpenAIRealtime
from fakes.twilio_rest import FakeTwilioRest
from test_gemini_call import chain_yaml as gemini_chain
from test_openai_call import passthrough_chain as openai_chain

ACCOUNT, TOKEN = "ACtest00000000000000000000000000", "s3cret-token"
CALLER, OUR_NUMBER = "+15550001111", "+15550100000"
DESTINATIONS = ("      transfer:\n"
                "        billing: {number: '+1 555 018 8000', say: 'Connecting you to billing now.', "
                "caller_id: '+15550100000', timeout_secs: 20}\n"
                "        sales: {number: '+15550199000', description: new orders}\n")


def with_twilio(yaml_text: str, port: int, api_url: str, tmp_path: Path) -> str:
    return (f"server: {{public_url: 'http://127.0.0.1:{port}'}}\n"
            f"twilio: {{account_sid: {ACCOUNT}, auth_token: {TOKEN}, phone_number: '{OUR_NUMBER}', "
            f"api_base_url: '{api_url}'}}\n"
            f"storage: {{url: 'sqlite:///{tmp_path}/calls.db', recordings: '{tmp_path}/recordings'}}\n" + yaml_text)


async def ask_for_transfer(server: LiveServer, idle: float) -> CallResult:
    """A signed inbound call whose caller says something (the scripted model then transfers) and listens on."""
    return await run_call(server.http_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=idle)],
                          from_number=CALLER, to_number=OUR_NUMBER, auth_token=TOKEN, account_sid=ACCOUNT)


def redirects(twilio: FakeTwilioRest) -> list[dict]:
    return [u for u in twilio.updates if "Twiml" in u]


async def test_gemini_transfers_the_call_to_billing_and_the_record_says_so(tmp_path: Path) -> None:
    port = free_port()
    script = GeminiScript(tool_call={"name": "transfer", "args": {"to": "billing", "reason": "a question on an invoice"}})
    async with FakeGeminiLive(script=script) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            yaml_text = gemini_chain(fake, turn_detection="model", vad=False).replace(
                "      voice: Kore\n", "      voice: Kore\n      tools: [transfer]\n" + DESTINATIONS)
            with LiveServer(with_twilio(yaml_text, port, twilio.url, tmp_path), port=port) as server:
                result = await ask_for_transfer(server, idle=5.0)
                server.wait_idle(finished=1)
                after = await twilio.dial_ended(result.call_sid, "completed", from_number=CALLER, to_number=OUR_NUMBER,
                                                duration=42)
                record = server.db(CallStore.get_call, result.call_sid)
                turns = server.db(CallStore.transcript, result.call_sid)
        session = await fake.session(0)
    print(result.timeline())
    declared = str(session.setup.get("tools"))
    assert "'transfer'" in declared and "'billing', 'sales'" in declared and "new orders" in declared
    redirect, = redirects(twilio)
    assert redirect == {"call": result.call_sid, "Twiml": (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Connecting you to billing now.</Say>'
        f'<Dial action="http://127.0.0.1:{port}/transfer/done?to=billing&amp;then=back&amp;line=default" '
        'callerId="+15550100000" method="POST" timeout="20"><Number>+15550188000</Number></Dial></Response>')}
    reply_end = result.events_of("audio_end")[-1].t
    closed = result.events_of("closed")[-1]
    assert closed.detail.endswith("by server") and closed.t >= reply_end, "redirected once the AI's line had played"
    assert after == '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup /></Response>'
    assert (record.outcome, record.reason) == ("transferred", "a question on an invoice")
    assert (record.transfer_destination, record.transfer_to, record.transfer_status) == (
        "billing", "+15550188000", "completed")
    assert turns, "the transcript so far stays with the call"
    assert "transfer   to billing (+15550188000): completed" in call_report(record, turns)


async def test_a_call_that_pressed_keys_is_transferred_from_its_new_stream(tmp_path: Path) -> None:
    """send_digits moves the call to a new stream (same call, same session); a transfer after that is made of the
    same call: both are REST updates of its SID, and it ends as one call, transferred, even though Twilio's stop
    (it took the update) reaches the bridge before Twilio's answer to the update does."""
    port = free_port()
    script = GeminiScript(tool_call={"name": "transfer", "args": {"to": "billing", "reason": "an invoice"}})
    async with FakeGeminiLive(script=script) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            twilio.answer_late = 2.0  # the stream's stop reaches the bridge well before the REST answer
            yaml_text = gemini_chain(fake, turn_detection="model", vad=False).replace(
                "      voice: Kore\n", "      voice: Kore\n" + DESTINATIONS).replace(
                "  - twilio.input\n", "  - twilio.input\n  - stages.keys:PressOnPound\n")  # presses 9 on #
            with LiveServer(with_twilio(yaml_text, port, twilio.url, tmp_path), port=port) as server:

                def on_new_stream() -> bool:  # the call's first stream handler runs it on the stream after the keys
                    return any(key.split("/")[1] != live.info.stream_sid for key, live in server.calls.live.items())

                result = await run_call(server.http_url, [
                    Pause(0.3), Dtmf("#"), Until(on_new_stream, timeout=15), Say(speech("vm-goodbye")),
                    WaitQuiet(idle=5.0)], from_number=CALLER, to_number=OUR_NUMBER, auth_token=TOKEN,
                    account_sid=ACCOUNT, redirects=twilio.redirects)
                server.wait_idle(finished=1)
                finished = server.calls.finished
                record = server.db(CallStore.get_call, result.call_sid)
    print(result.timeline())
    keys, dial = redirects(twilio)
    assert keys["call"] == dial["call"] == result.call_sid
    assert [verb.tag for verb in ET.fromstring(keys["Twiml"])] == ["Play", "Connect"]
    assert [verb.tag for verb in ET.fromstring(dial["Twiml"])] == ["Say", "Dial"]
    assert result.digits_played == "9" and len(result.stream_sids) == 2
    assert not result.events_of("timeout"), "the call reached its new stream before the caller spoke"
    assert finished == 1, "one call: the stream after the keys joined it, the transfer ended it"
    assert record is not None and (record.outcome, record.transfer_destination) == ("transferred", "billing")


async def test_a_model_slow_to_say_its_line_is_heard_before_the_call_is_transferred(tmp_path: Path) -> None:
    port = free_port()
    script = GeminiScript(tool_call={"name": "transfer", "args": {"to": "sales"}}, latency_ms=1500)
    async with FakeGeminiLive(script=script) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            yaml_text = gemini_chain(fake, turn_detection="model", vad=False).replace(
                "      voice: Kore\n", "      voice: Kore\n" + DESTINATIONS)
            with LiveServer(with_twilio(yaml_text, port, twilio.url, tmp_path), port=port) as server:
                result = await ask_for_transfer(server, idle=6.0)
    print(result.timeline())
    assert len(redirects(twilio)) == 1
    line = result.events_of("audio_end")
    assert line, "the AI's line (1.5 s after the tool's result) played before the redirect"
    assert result.events_of("closed")[-1].t >= line[-1].t


async def test_nobody_answers_and_the_caller_is_back_with_the_ai_which_says_so(tmp_path: Path) -> None:
    port = free_port()
    async with FakeOpenAIRealtime(tool_call={"name": "transfer", "arguments": {"to": "sales"}}) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            yaml_text = openai_chain(fake).replace("      voice: cedar\n", "      voice: cedar\n" + DESTINATIONS)
            with LiveServer(with_twilio(yaml_text, port, twilio.url, tmp_path), port=port) as server:
                first = await ask_for_transfer(server, idle=5.0)
                server.wait_idle(finished=1)
                before = server.db(CallStore.get_call, first.call_sid)
                fake.tool_call = None  # back from the transfer, the model only talks
                twiml = await twilio.dial_ended(first.call_sid, "no-answer", from_number=CALLER, to_number=OUR_NUMBER)
                stream_url, parameters = parse_twiml(twiml)
                back = await run_call(stream_url, [WaitHeard(timeout=10), WaitQuiet(idle=1.0)],
                                      call_sid=first.call_sid, account_sid=ACCOUNT, custom_parameters=parameters)
                server.wait_idle(finished=2)
                record = server.db(CallStore.get_call, first.call_sid)
                turns = server.db(CallStore.transcript, first.call_sid)
        sessions = fake.sessions
    print(back.timeline())
    assert record.started_at == before.started_at, "one call, one clock: the leg back does not restart it"
    assert record.duration_s > first.events_of("closed")[-1].t + back.events_of("closed")[-1].t - 1.0
    agent = [t for t in turns if t.speaker == "agent"]
    assert len(agent) >= 2 and agent[-1].started_ms > first.events_of("closed")[-1].t * 1000, \
        "the leg back's turns follow the first leg's on the call's clock"
    redirect, = redirects(twilio)
    assert redirect["Twiml"] == (
        '<?xml version="1.0" encoding="UTF-8"?><Response>'
        f'<Dial action="http://127.0.0.1:{port}/transfer/done?to=sales&amp;then=back&amp;line=default" '
        'method="POST" timeout="30"><Number>+15550199000</Number></Dial></Response>'), "no say: the AI said its line"
    assert "said its one short line" not in str(sessions[0].function_outputs)
    assert "Say your one short line now" in str(sessions[0].function_outputs)
    assert stream_url == f"ws://127.0.0.1:{port}/media-stream"
    assert (parameters["transferTo"], parameters["transferStatus"], parameters["callSid"]) == (
        "sales", "no-answer", first.call_sid)
    assert "streamToken" in parameters, "the returning stream is checked like any other"
    assert len(sessions) == 2
    opening = [e for e in sessions[1].events if e["type"] == "conversation.item.create"]
    assert "nobody at sales answered" in str(opening), "the AI opens with the news"
    assert back.events_of("audio_start"), "and the caller hears it"
    assert back.events_of("closed")[-1].detail.endswith("by caller")
    assert (record.outcome, record.transfer_destination, record.transfer_status) == (
        "caller_hung_up", "sales", "no_answer")


async def test_without_a_twilio_account_the_model_hears_it_cannot_transfer() -> None:
    async with FakeOpenAIRealtime(tool_call={"name": "transfer", "arguments": {"to": "sales"}}) as fake:
        yaml_text = openai_chain(fake).replace("      voice: cedar\n", "      voice: cedar\n" + DESTINATIONS)
        with LiveServer(yaml_text) as server:
            result = await run_call(server.ws_url, [Pause(0.3), Say(speech("vm-goodbye")), WaitQuiet(idle=2.0)])
        session = fake.sessions[0]
    assert "cannot transfer" in str(session.function_outputs)
    assert result.events_of("closed")[-1].detail.endswith("by caller"), "the call went on"


@pytest.mark.parametrize("destinations, error", [
    ("      transfer:\n        billing: {number: '555-0188'}\n", r"t.yaml:\d+: stage 2 \(openai.realtime\): .*E.164"),
    ("      transfer:\n        billing: {number: '+15550188000', ring_for: 5}\n",
     r"t.yaml:\d+: stage 2 \(openai.realtime\): .*ring_for"),
    ("      transfer:\n        'bill ing': {number: '+15550188000'}\n", r"stage 2 \(openai.realtime\): .*'bill ing'"),
    ("      tools: [transfer]\n", r"stage 2 \(openai.realtime\): .*transfer needs destinations"),
    ("      transfer:\n        billing: {number: '+15550188000', timeout_secs: 2}\n", r"timeout_secs"),
], ids=["not-e164", "unknown-key", "bad-name", "no-destinations", "timeout"])
def test_bad_transfer_configuration_names_file_line_and_stage(destinations: str, error: str) -> None:
    text = ("pipeline:\n  - twilio.input\n  - openai.realtime:\n      api_key: k\n      audio_format: pcmu\n"
            + destinations + "  - twilio.output\n")
    with pytest.raises(ConfigError, match=error):
        build_chain(load_text(text, "t.yaml", {}))


async def test_a_busy_destination_with_on_no_answer_voicemail_takes_a_message(tmp_path: Path) -> None:
    port = free_port()
    async with FakeOpenAIRealtime(tool_call={"name": "transfer", "arguments": {"to": "sales"}}) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            yaml_text = openai_chain(fake).replace(
                "      voice: cedar\n", "      voice: cedar\n      transfer:\n"
                "        sales: {number: '+15550199000', on_no_answer: voicemail}\n")
            with LiveServer(with_twilio(yaml_text, port, twilio.url, tmp_path), port=port) as server:
                first = await ask_for_transfer(server, idle=5.0)
                server.wait_idle(finished=1)
                twiml = await twilio.dial_ended(first.call_sid, "busy", from_number=CALLER, to_number=OUR_NUMBER)
                stream_url, parameters = parse_twiml(twiml)
                back = await run_call(stream_url, [WaitHeard(timeout=10), WaitQuiet(idle=0.5),
                                                   Say(speech("hello-world")), WaitQuiet(idle=6.0)],
                                      call_sid=first.call_sid, account_sid=ACCOUNT, custom_parameters=parameters)
                server.wait_idle(finished=2)
                record = server.db(CallStore.get_call, first.call_sid)
                messages = server.db(CallStore.messages, first.call_sid)
        sessions = fake.sessions
    print(back.timeline())
    assert "then=voicemail" in redirects(twilio)[0]["Twiml"]
    assert parameters["afterTransfer"] == "voicemail"
    assert len(sessions) == 1, "the voicemail, not the AI, took the caller back"
    assert back.events_of("closed")[-1].detail.endswith("by server"), "the voicemail hung up after the message"
    assert len(messages) == 1 and messages[0].duration_ms >= 1000
    assert (record.outcome, record.reason, record.transfer_status) == ("voicemail", "transfer to sales: busy", "busy")


async def test_when_twilio_refuses_the_redirect_the_caller_stays_with_the_ai(tmp_path: Path) -> None:
    port = free_port()
    async with FakeOpenAIRealtime(tool_call={"name": "transfer", "arguments": {"to": "sales"}}) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            twilio.outage = (500, "application/json", '{"code": 20500, "message": "Internal Server Error", '
                             '"more_info": "https://www.twilio.com/docs/errors/20500", "status": 500}')
            yaml_text = openai_chain(fake).replace("      voice: cedar\n", "      voice: cedar\n" + DESTINATIONS)
            with LiveServer(with_twilio(yaml_text, port, twilio.url, tmp_path), port=port) as server:
                result = await ask_for_transfer(server, idle=3.0)
                server.wait_idle(finished=1)
                record = server.db(CallStore.get_call, result.call_sid)
    assert result.events_of("closed")[-1].detail.endswith("by caller"), "the call went on"
    assert (record.outcome, record.transfer_destination) == ("caller_hung_up", None)


@pytest.mark.parametrize("warm, answer", [(False, "no-answer"), (False, "take"), (True, "decline"), (True, "take"),
                                          ("ai", "take")],
                         ids=["cold-no-answer", "cold-taken", "warm-declined", "warm-joined", "warm-ai-brief-joined"])
async def test_voice_bridge_call_follows_a_transfer_to_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys, warm: bool | str, answer: str) -> None:
    from conftest import run_cli

    rest_port = free_port()  # the CLI plays Twilio's REST API there
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)
    port = free_port()
    destination = DESTINATIONS.replace("description: new orders}", "description: new orders, warm: true"
                                       + (", brief: ai}" if warm == "ai" else "}"))
    async with FakeOpenAIRealtime(tool_call={"name": "transfer", "arguments": {"to": "sales"}},
                                  tool_call_sessions=1) as fake:
        yaml_text = openai_chain(fake).replace("      voice: cedar\n",
                                               "      voice: cedar\n" + (destination if warm else DESTINATIONS))
        with LiveServer(with_twilio(yaml_text, port, f"http://127.0.0.1:{rest_port}", tmp_path), port=port) as server:
            capsys.readouterr()
            code = await run_cli("call", server.http_url, "--wav", str(Path(__file__).parent / "fixtures" / "speech"
                                                                       / "hello-world.wav"),
                                 "--greeting-wait", "0", "--idle", "1", "--to", OUR_NUMBER,
                                 "--twilio-api", str(rest_port), "--transfer-answer", answer,
                                 "--out", str(tmp_path / "heard.wav"))
            out = capsys.readouterr().out
            server.wait_idle(finished=2 if answer != "take" or warm == "ai" else 1)
            record = next(r for r in server.db(CallStore.recent_calls, 5) if r.direction == "inbound")
        sessions = fake.sessions
    print(out)
    assert code == 0
    transfers = [line for line in out.splitlines() if line.startswith("transfer: ")]
    if warm:
        assert transfers[0] == "transfer: on hold for a warm transfer"
        assert "the bridge rings +15550199000" in transfers[1]
        assert ("the AI briefed the person on their own stream; they pressed 1" if warm == "ai"
                else "Press 1 or say yes") in transfers[2]
    else:
        assert transfers[0] == "transfer: transferred to +15550199000 (rings 30 s)"
    if answer == "take":
        assert len(sessions) == (2 if warm == "ai" else 1), "the AI briefed the person in a session of its own"
        assert transfers[-1] in ("transfer: the call ended", "transfer: the person joined the caller in conference "
                                 f"{record.call_sid}; the caller hangs up")
    else:
        news = "no-answer" if not warm else "declined"
        assert transfers[-1] == f"transfer: back on the line with the bridge (the transfer: {news})"
        assert len(sessions) == 2, "the caller was back with the AI"
        assert out.count("audio_start") >= 2, "and heard it on the leg back"
    assert (tmp_path / "heard.wav").stat().st_size > 8000


async def test_an_end_call_after_a_transfer_began_does_not_hang_the_caller_up() -> None:
    from agent_voice_bridge.calls.live_call import LiveCall
    from agent_voice_bridge.pipelines.chain import Chain
    from agent_voice_bridge.pipelines.config import TwilioConfig
    from agent_voice_bridge.transports.call_control import TransferRequest
    from agent_voice_bridge.transports.call_info import CallInfo

    live = LiveCall(CallInfo(call_sid="CA" + "0" * 32, stream_sid="MZ1"), Chain(source="t.yaml", stages=[]),
                    TwilioConfig(account_sid=ACCOUNT, auth_token=TOKEN, api_base_url="http://127.0.0.1:9"),
                    webhook_base="https://voice.example.com")
    await live.transfer(TransferRequest(destination="sales", number="+15550199000", reason="r", say="One moment."))
    await live.hang_up("the model also said goodbye")
    assert live._transfer_task is not None and live._hang_up_task is None
    live._transfer_task.cancel()
