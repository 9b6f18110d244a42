"""Warm transfer: the caller waits on hold while the person is rung, briefed and asked; joined, or back with the AI.

The caller's leg is the simulated caller on real media streams (the AI leg, and the
leg back when nobody takes the call); the person's leg is Twilio's side in the fake
(``fakes/twilio_rest.py``): the REST call the bridge places, its answer with
answering-machine detection, its ``<Gather>``, its status callbacks. Every REST request
and TwiML document is asserted exactly and checked against the twilio SDK's model.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

from agent_voice_bridge.calls.warm_states import WAITING, WarmEvent, WarmState, next_state
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.simulated_caller import CallResult, Pause, Say, WaitHeard, WaitQuiet, parse_twiml, run_call
from conftest import LiveServer, free_port, speech
from fakes.openai_realtime import FakeOpenAIRealtime
from fakes.twilio_rest import FakeTwilioRest, PlacedCall
from test_openai_call import passthrough_chain as openai_chain
from test_transfer import ACCOUNT, CALLER, OUR_NUMBER, TOKEN, ask_for_transfer, redirects, with_twilio

SUMMARY = "Ann is calling about a refund for order 12."
WARM = ("      transfer:\n"
        "        billing: {number: '+15550188000', warm: true, say: 'Please hold while I ask billing.', "
        "timeout_secs: 20, brief_timeout_secs: 10}\n")
DECLINED_BYE = '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Thank you. Goodbye.</Say><Hangup /></Response>'
HANGUP = '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup /></Response>'


def test_every_state_a_caller_waits_in_has_a_way_back() -> None:
    for state in WAITING:
        for event in (WarmEvent.TIMED_OUT, WarmEvent.NOT_ANSWERED, WarmEvent.DECLINED, WarmEvent.MACHINE_ANSWERED):
            assert next_state(state, event) == WarmState.BACK, (state, event)
        assert next_state(state, WarmEvent.CALLER_LEFT) == WarmState.ENDED
    assert next_state(WarmState.JOINED, WarmEvent.PERSON_LEFT) == WarmState.BACK
    assert next_state(WarmState.BACK, WarmEvent.ACCEPTED) is None, "a late yes joins nobody"


@dataclass
class Warm:
    server: LiveServer
    twilio: FakeTwilioRest
    fake: FakeOpenAIRealtime
    port: int
    first: CallResult
    person: PlacedCall

    @property
    def call_sid(self) -> str:
        return self.first.call_sid

    def record(self):
        return self.server.db(CallStore.get_call, self.call_sid)

    def back_twiml(self) -> str:
        """The TwiML the caller was last redirected to (REST), which must bring them back to a stream."""
        return [u for u in redirects(self.twilio) if u["call"] == self.call_sid][-1]["Twiml"]

    async def back_leg(self) -> CallResult:
        stream_url, parameters = parse_twiml(self.back_twiml())
        self.fake.tool_call = None  # back from the transfer, the model only talks
        result = await run_call(stream_url, [WaitHeard(timeout=10), WaitQuiet(idle=1.0)], call_sid=self.call_sid,
                                account_sid=ACCOUNT, custom_parameters=parameters)
        print(result.timeline())
        return result


class warm_call:
    """``async with warm_call(tmp_path) as warm:`` the AI has put the caller on hold and the person's phone rings."""

    def __init__(self, tmp_path: Path, hold_limit: float | None = None, destination: str = WARM):
        self.tmp_path, self.hold_limit, self.destination = tmp_path, hold_limit, destination

    async def __aenter__(self) -> Warm:
        port = free_port()
        arguments = {"to": "billing", "reason": "a refund", "summary": SUMMARY}
        self._fake = FakeOpenAIRealtime(tool_call={"name": "transfer", "arguments": arguments})
        fake = await self._fake.__aenter__()
        self._twilio = FakeTwilioRest(ACCOUNT, TOKEN)
        twilio = self._twilio.__enter__()
        yaml_text = openai_chain(fake).replace("      voice: cedar\n", "      voice: cedar\n" + self.destination)
        self._server = LiveServer(with_twilio(yaml_text, port, twilio.url, self.tmp_path), port=port)
        server = self._server.__enter__()
        if self.hold_limit is not None:
            server.calls.transfers.hold_limit = lambda request: self.hold_limit
        first = await ask_for_transfer(server, idle=5.0)
        server.wait_idle(finished=1)
        person, = twilio.calls
        return Warm(server, twilio, fake, port, first, person)

    async def __aexit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)
        self._twilio.__exit__(*exc)
        await self._fake.__aexit__(*exc)


def person_facts(warm: Warm) -> str:
    return urlencode({"to": "billing", "then": "back", "line": "default", "call": warm.call_sid, "caller": CALLER,
                      "callee": OUR_NUMBER, "summary": SUMMARY, "brief_secs": "10"})


async def test_the_person_is_briefed_presses_1_and_joins_the_caller(tmp_path: Path) -> None:
    async with warm_call(tmp_path) as warm:
        base = f"http://127.0.0.1:{warm.port}"
        brief = await warm.twilio.answer(warm.person.sid, "human")
        joined = await warm.twilio.gather(warm.person.sid, brief, Digits="1")
        record = warm.record()
        bye = await warm.twilio.dial_ended(warm.call_sid, "completed", from_number=CALLER, to_number=OUR_NUMBER,
                                           call_status="completed")  # later, the caller hangs up
        ended = warm.record()
    assert warm.person.form == {
        "To": "+15550188000", "From": OUR_NUMBER, "Method": "POST", "Timeout": "20", "MachineDetection": "Enable",
        "Url": f"{base}/transfer/person?{person_facts(warm)}",
        "StatusCallback": f"{base}/transfer/person/status?{person_facts(warm)}", "StatusCallbackMethod": "POST",
        "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"]}
    hold, = redirects(warm.twilio)
    facts = "to=billing&amp;then=back&amp;line=default"
    assert hold == {"call": warm.call_sid, "Twiml": (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Say>Please hold while I ask billing.</Say>'
        f'<Dial action="{base}/transfer/done?{facts}&amp;person={warm.person.sid}" method="POST">'
        f'<Conference beep="false" endConferenceOnExit="true" startConferenceOnEnter="false" waitMethod="POST" '
        f'waitUrl="{base}/transfer/hold?{facts}">{warm.call_sid}</Conference></Dial></Response>')}
    action = f"{base}/transfer/person/answer?{person_facts(warm)}".replace("&", "&amp;")
    assert brief == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Gather action="' + action + '" actionOnEmptyResult="true" '
        'hints="yes, no" input="dtmf speech" method="POST" numDigits="1" timeout="10"><Say>' + SUMMARY +
        ' Press 1 or say yes to take the call. Press 2 or say no if you cannot.</Say></Gather>'
        '<Redirect method="POST">' + action + '</Redirect></Response>')
    assert joined == ('<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Conference beep="false" '
                      f'endConferenceOnExit="true" startConferenceOnEnter="true">{warm.call_sid}</Conference></Dial>'
                      '</Response>')
    assert (record.outcome, record.reason, record.transfer_destination, record.transfer_status) == (
        "transferred", "a refund", "billing", "joined")
    assert bye == HANGUP and ended.transfer_status == "ended"
    assert len(redirects(warm.twilio)) == 1, "the caller stayed in the conference"


async def test_the_person_says_no_and_the_caller_is_back_with_the_ai_which_says_so(tmp_path: Path) -> None:
    async with warm_call(tmp_path) as warm:
        brief = await warm.twilio.answer(warm.person.sid, "human")
        bye = await warm.twilio.gather(warm.person.sid, brief, SpeechResult="No, not right now.")
        back = await warm.back_leg()
        warm.server.wait_idle(finished=2)
        record = warm.record()
        opening = [e for e in warm.fake.sessions[1].events if e["type"] == "conversation.item.create"]
    assert bye == DECLINED_BYE
    _, parameters = parse_twiml(warm.back_twiml())
    assert (parameters["transferTo"], parameters["transferStatus"], parameters["afterTransfer"]) == (
        "billing", "declined", "back")
    assert "billing can't take the call right now" in str(opening)
    assert back.events_of("audio_start"), "the caller hears the AI again"
    assert (record.transfer_status, record.outcome) == ("back", "caller_hung_up")


@pytest.mark.parametrize("how", ["no-answer", "busy", "machine", "silence"])
async def test_nobody_takes_the_call_and_the_caller_is_brought_back(tmp_path: Path, how: str) -> None:
    async with warm_call(tmp_path) as warm:
        if how in ("no-answer", "busy"):
            assert (await warm.twilio.status(warm.person.sid, how)).status_code == 204
            answer = None
        elif how == "machine":
            answer = await warm.twilio.answer(warm.person.sid, "machine_start")
        else:  # a person answers, hears the brief, and says nothing until the Gather times out
            answer = await warm.twilio.gather(warm.person.sid, await warm.twilio.answer(warm.person.sid, "human"))
        record = warm.record()
    _, parameters = parse_twiml(warm.back_twiml())
    expected = {"no-answer": "no-answer", "busy": "busy", "machine": "machine", "silence": "declined"}[how]
    assert parameters["transferStatus"] == expected and parameters["callSid"] == warm.call_sid
    assert "streamToken" in parameters
    assert answer in (None, HANGUP, DECLINED_BYE)
    assert record.transfer_status == "back"


async def test_the_caller_hangs_up_on_hold_and_the_persons_call_is_cancelled(tmp_path: Path) -> None:
    async with warm_call(tmp_path) as warm:
        bye = await warm.twilio.dial_ended(warm.call_sid, "completed", from_number=CALLER, to_number=OUR_NUMBER,
                                           call_status="completed")
        late = await warm.twilio.answer(warm.person.sid, "human")  # the person picks up just too late
        record = warm.record()
    assert bye == HANGUP
    assert {"call": warm.person.sid, "Status": "canceled"} in warm.twilio.updates
    assert late == HANGUP, "nobody to brief them about"
    assert record.transfer_status == "ended"


async def test_the_person_drops_after_joining_and_the_caller_is_back_with_the_ai(tmp_path: Path) -> None:
    async with warm_call(tmp_path) as warm:
        brief = await warm.twilio.answer(warm.person.sid, "human")
        await warm.twilio.gather(warm.person.sid, brief, SpeechResult="Yes.")
        assert (await warm.twilio.status(warm.person.sid, "completed")).status_code == 204  # they hang up
        twiml = await warm.twilio.dial_ended(warm.call_sid, "completed", from_number=CALLER, to_number=OUR_NUMBER)
        stream_url, parameters = parse_twiml(twiml)
        warm.fake.tool_call = None
        back = await run_call(stream_url, [WaitHeard(timeout=10), WaitQuiet(idle=1.0)], call_sid=warm.call_sid,
                              account_sid=ACCOUNT, custom_parameters=parameters)
        opening = [e for e in warm.fake.sessions[1].events if e["type"] == "conversation.item.create"]
    assert parameters["transferStatus"] == "left"
    assert "billing has left the call" in str(opening)
    assert back.events_of("audio_start")
    assert len(redirects(warm.twilio)) == 1, "the conference ending brought them back, no REST needed"


async def test_the_watchdog_brings_a_forgotten_caller_back(tmp_path: Path) -> None:
    async with warm_call(tmp_path, hold_limit=1.0) as warm:
        for _ in range(100):  # no webhook ever comes; the watchdog acts after its limit
            if len(redirects(warm.twilio)) == 2:
                break
            await asyncio.sleep(0.1)
        record = warm.record()
    _, parameters = parse_twiml(warm.back_twiml())
    assert parameters["transferStatus"] == "no-answer"
    assert {"call": warm.person.sid, "Status": "canceled"} in warm.twilio.updates
    assert record.transfer_status == "back"



@pytest.mark.parametrize("own", [False, True], ids=["built-in", "own-file"])
async def test_the_caller_on_hold_hears_looped_hold_audio_which_the_user_can_replace(tmp_path: Path, own: bool) -> None:
    from importlib import resources

    import httpx
    import numpy as np

    from agent_voice_bridge.transports.simulated_caller import save_wav

    destination = WARM
    if own:
        save_wav(tmp_path / "hold.wav", (np.sin(np.arange(8000) * 2 * np.pi * 660 / 8000) * 8000).astype(np.int16))
        destination = WARM.replace("brief_timeout_secs: 10}", f"brief_timeout_secs: 10, hold_audio: '{tmp_path}/hold.wav'}}")
    async with warm_call(tmp_path, destination=destination) as warm:
        hold, = redirects(warm.twilio)
        play = await warm.twilio.wait_url(hold["Twiml"], warm.call_sid, CALLER, OUR_NUMBER)
        audio_url = play.split('<Play loop="0">')[1].split("</Play>")[0].replace("&amp;", "&")
        async with httpx.AsyncClient() as http:
            audio = await http.get(audio_url)
    assert play.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Play loop="0">http://127.0.0.1:')
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF" and audio.content[8:12] == b"WAVE"
    expected = ((tmp_path / "hold.wav").read_bytes() if own
                else resources.files("agent_voice_bridge.assets").joinpath("hold_music.wav").read_bytes())
    assert audio.content == expected


AI_BRIEF = WARM.replace("brief_timeout_secs: 10}", "brief_timeout_secs: 10, brief: ai}")


async def person_leg(warm: Warm, steps: list) -> tuple[CallResult, dict[str, str]]:
    """The person answers; Twilio follows the TwiML the bridge gave their call onto a media stream of its own."""
    stream_url, parameters = parse_twiml(await warm.twilio.answer(warm.person.sid, "human"))
    result = await run_call(stream_url, steps, call_sid=warm.person.sid, account_sid=ACCOUNT,
                            custom_parameters=parameters)
    print(result.timeline())
    return result, parameters


async def test_the_ai_briefs_the_person_on_their_own_stream_and_they_say_yes(tmp_path: Path) -> None:
    async with warm_call(tmp_path, destination=AI_BRIEF) as warm:
        warm.fake.tool_call, warm.fake.tool_call_response = {"name": "accept_call"}, 1  # their yes: the model accepts
        person, parameters = await person_leg(warm, [WaitHeard(timeout=10), WaitQuiet(idle=0.6),
                                                     Say(speech("hello-world")), WaitQuiet(idle=3.0)])
        warm.server.wait_idle(finished=2)
        record, briefed = warm.record(), warm.server.db(CallStore.get_call, warm.person.sid)
        session = warm.fake.sessions[1]
    assert (parameters["transferRole"], parameters["transferCall"], parameters["callSid"]) == (
        "brief", warm.call_sid, warm.person.sid)
    assert "streamToken" in parameters
    assert SUMMARY in session.config["instructions"]
    assert {t["name"] for t in session.config["tools"]} == {"accept_call", "decline_call"}
    opening = [e for e in session.events if e["type"] == "conversation.item.create"]
    assert "I have a caller on hold for billing" in str(opening) and SUMMARY in str(opening)
    assert person.events_of("audio_start")[0].t < person.utterances[0][0], "they heard the brief first"
    join = {"call": warm.person.sid, "Twiml": (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Conference beep="false" endConferenceOnExit="true" '
        f'startConferenceOnEnter="true">{warm.call_sid}</Conference></Dial></Response>')}
    assert join in warm.twilio.updates, "their call was moved into the caller's conference"
    assert person.events_of("closed")[-1].detail.endswith("by server")
    assert (record.transfer_status, briefed.outcome) == ("joined", "transferred")
    assert [u["call"] for u in redirects(warm.twilio)] == [warm.call_sid, warm.person.sid], \
        "the caller stayed on hold until the person joined them"


async def test_the_person_presses_2_and_the_caller_is_back_with_the_ai(tmp_path: Path) -> None:
    from agent_voice_bridge.transports.simulated_caller import Dtmf

    async with warm_call(tmp_path, destination=AI_BRIEF) as warm:
        warm.fake.tool_call = None
        person, _ = await person_leg(warm, [WaitHeard(timeout=10), WaitQuiet(idle=0.6), Dtmf("2"),
                                            WaitQuiet(idle=2.0)])
        warm.server.wait_idle(finished=2)
        record, briefed = warm.record(), warm.server.db(CallStore.get_call, warm.person.sid)
    bye = {"call": warm.person.sid, "Twiml": DECLINED_BYE}
    assert bye in warm.twilio.updates
    _, parameters = parse_twiml(warm.back_twiml())
    assert (parameters["transferStatus"], parameters["callSid"]) == ("declined", warm.call_sid)
    assert (record.transfer_status, briefed.outcome) == ("back", "declined")
    assert person.events_of("closed")[-1].detail.endswith("by server")


async def test_a_person_who_never_decides_counts_as_a_no(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_voice_bridge.calls import session

    monkeypatch.setattr(session, "BRIEF_SPEAKING_SECS", 0.0)
    async with warm_call(tmp_path, destination=AI_BRIEF.replace("brief_timeout_secs: 10", "brief_timeout_secs: 3")) \
            as warm:
        warm.fake.tool_call = None
        person, _ = await person_leg(warm, [WaitHeard(timeout=10), WaitQuiet(idle=6.0)])
        record = warm.record()
    _, parameters = parse_twiml(warm.back_twiml())
    assert parameters["transferStatus"] == "declined" and record.transfer_status == "back"
    closed = person.events_of("closed")[-1]
    assert closed.detail.endswith("by server") and 2.5 <= closed.t <= 6.0, closed
