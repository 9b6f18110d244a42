"""The AI presses keys on an outbound call (an automated menu): ``tools: [send_digits]``.

Twilio's media stream takes no DTMF from the server, so the bridge replaces the call's TwiML
(REST update) with ``<Play digits>`` and a new ``<Connect><Stream>``. The fake Twilio REST
server hands the update to the simulated call, which does what Twilio does: ``stop`` on the
old stream, the keys played to the far end, a new stream to the TwiML's URL with its own
``<Parameter>``s. The call must go on as the same call: one record, one AI session (the model
keeps what it heard), the model's next words heard on the new stream.
"""

from __future__ import annotations

import wave
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent_voice_bridge.calls.live_call import digits_seconds
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.storage.records import CallRecord
from agent_voice_bridge.transports.simulated_caller import (
    CallResult,
    Dtmf,
    Pause,
    Say,
    Step,
    Until,
    WaitHeard,
    WaitQuiet,
    load_wav,
    parse_twiml,
    run_call,
)
from conftest import LiveServer, free_port, run_cli, speech
from fakes.openai_realtime import FakeOpenAIRealtime, FakeRealtimeSession
from fakes.twilio_rest import FakeTwilioRest

ACCOUNT, TOKEN, OUR_NUMBER, MENU_NUMBER = "ACtest00000000000000000000000000", "s3cret-token", "+15550100000", "+15557650000"
MENU = load_wav("/usr/share/asterisk/sounds/en/if-correct-press.wav")  # a real menu prompt: "If this is correct, press…"


def ivr_yaml(port: int, twilio: FakeTwilioRest, fake: FakeOpenAIRealtime, tmp_path: Path) -> str:
    return (f"server: {{public_url: 'http://127.0.0.1:{port}'}}\n"
            f"twilio: {{account_sid: {ACCOUNT}, auth_token: {TOKEN}, phone_number: '{OUR_NUMBER}', "
            f"api_base_url: '{twilio.url}'}}\n"
            f"storage: {{url: 'sqlite:///{tmp_path}/calls.db', record: true, recordings: '{tmp_path}/rec'}}\n"
            "outbound: {machine_detection: false}\n"
            "pipeline:\n  - twilio.input\n  - openai.realtime:\n      api_key: test-key\n"
            f"      base_url: {fake.url}\n      audio_format: pcmu\n      tools: [send_digits]\n"
            "      instructions: 'Find the billing department in the menu you reach.'\n  - twilio.output\n")


@dataclass
class IvrCall:
    result: CallResult
    twilio: FakeTwilioRest
    sessions: list[FakeRealtimeSession]
    parameters: dict[str, str]
    record: CallRecord | None
    finished: int
    port: int


async def call_the_menu(tmp_path: Path, digits: str, *, refuse_updates: bool = False,
                        then: list[Step] | None = None) -> IvrCall:
    """Dial the menu (the simulated far end), which plays its prompt; the model answers with send_digits(digits).

    The far end waits until the bridge has updated the call (or, when Twilio refuses, for the model's words),
    then does ``then`` (default: hears the model out) and hangs up.
    """
    port = free_port()
    async with FakeOpenAIRealtime(tool_call={"name": "send_digits", "arguments": {"digits": digits}},
                                  reply_seconds=1.0) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            yaml_text = ivr_yaml(port, twilio, fake, tmp_path)
            config = tmp_path / "ivr.yaml"
            config.write_text(yaml_text)
            with LiveServer(yaml_text, str(config), port=port) as server:
                assert await run_cli("dial", MENU_NUMBER, "-c", str(config)) == 0
                placed, = twilio.calls
                stream_url, parameters = parse_twiml(await twilio.answer(placed.sid))
                if refuse_updates:
                    twilio.outage = (503, "application/json",
                                     '{"code": 20503, "message": "Service unavailable", "status": 503}')
                    wait: list[Step] = []
                else:
                    wait = [Until(lambda: bool(twilio.updates), timeout=15)]
                after = [WaitHeard(timeout=15), WaitQuiet(idle=0.5)] if then is None else then
                result = await run_call(stream_url, [Pause(0.3), Say(MENU, "the menu"), *wait, *after],
                                        call_sid=placed.sid, custom_parameters=parameters, redirects=twilio.redirects,
                                        tail=0.0)
                server.wait_idle(finished=1)
                record = server.db(CallStore.get_call, placed.sid)
                finished = server.calls.finished
        print(result.timeline())
        return IvrCall(result, twilio, list(fake.sessions), parameters, record, finished, port)


def gap_of(result: CallResult, digits: str) -> tuple[float, float]:
    """(seconds off the stream on the caller's clock: old stream's stop → new stream's connected, keys' part)."""
    stopped = result.events_of("stop")[0].t
    back = result.events_of("connected")[1].t
    return back - stopped, digits_seconds(digits)


def onset_after(pcm: np.ndarray, t: float) -> float:
    """The first 20 ms frame louder than -40 dBFS at or after ``t`` s (8 kHz int16)."""
    start = int(t * 50)
    frames = pcm[start * 160:len(pcm) // 160 * 160].astype(np.float64).reshape(-1, 160)
    loud = np.nonzero(np.sqrt((frames ** 2).mean(axis=1)) > 32768 * 10 ** (-40 / 20))[0]
    return (start + loud[0]) / 50


async def test_the_ai_presses_a_key_and_the_call_goes_on_on_a_new_stream(tmp_path: Path) -> None:
    call = await call_the_menu(tmp_path, "w2", then=[WaitHeard(timeout=15), WaitQuiet(idle=0.5),
                                                     Say(speech("hello-world"), "after the keys"), WaitQuiet(idle=0.8)])
    result, twilio, parameters, port = call.result, call.twilio, call.parameters, call.port
    gap, keys = gap_of(result, "w2")
    print(f"off the stream {gap * 1000:.0f} ms, of which {keys * 1000:.0f} ms the keys themselves")

    # The exact update: <Play digits> then a stream back to this server, with a fresh token.
    update, = twilio.updates
    assert set(update) == {"call", "Twiml"} and update["call"] == result.call_sid
    root = ET.fromstring(update["Twiml"])
    assert [child.tag for child in root] == ["Play", "Connect"]
    assert root[0].attrib == {"digits": "w2"}
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == f"ws://127.0.0.1:{port}/media-stream"
    again = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert again["streamToken"] != parameters["streamToken"], "a new one-time token"
    assert {k: v for k, v in again.items() if k != "streamToken"} == \
        {k: v for k, v in parameters.items() if k != "streamToken"}, "the call's parameters, unchanged"

    # Twilio's side: the old stream stopped, the key reached the far end, a new stream carried the call on.
    assert result.digits_played == "2"
    assert len(result.stream_sids) == 2 and result.custom_parameters == again
    assert not result.events_of("redirect_ended") and not result.events_of("redirect_failed")
    assert gap < keys + 3.0, "a busy box's headroom over the REST round trip and the new handshake"

    # One call, one AI session: the model heard the result and spoke, on the new stream.
    assert call.record is not None
    assert call.finished == 1 and (call.record.outcome, call.record.direction) == ("caller_hung_up", "outbound")
    session, = call.sessions
    output, = session.function_outputs
    assert output.name == "send_digits" and "Pressed 2" in output.output
    back = result.events_of("connected")[1].t
    assert any(e.t >= back for e in result.events_of("audio_start")), "the model's next words were heard"
    assert not session.errors

    # The recording keeps the call's time across the gap (silence for it): what the caller said after the keys
    # is where the caller said it.
    assert call.record.recording_path
    with wave.open(call.record.recording_path) as wav:
        stereo = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    said_at = result.utterances[-1][0]
    recorded_at = onset_after(stereo[:, 0], result.events_of("connected")[1].t)
    print(f"said at {said_at:.2f} s, recorded at {recorded_at:.2f} s")
    assert abs(recorded_at - said_at) <= 0.1


async def test_a_refused_update_leaves_the_call_on_its_stream_and_tells_the_model(tmp_path: Path) -> None:
    call = await call_the_menu(tmp_path, "1w#", refuse_updates=True)
    result, session = call.result, call.sessions[0]
    assert len(result.stream_sids) == 1 and not result.events_of("stop")[:-1], "only the hang-up's stop"
    assert result.digits_played == ""
    output, = session.function_outputs
    assert "error" in output.output and "503" in output.output
    assert result.events_of("audio_start"), "the model told the caller instead"


async def test_a_far_end_that_hangs_up_while_the_keys_play_ends_the_call_cleanly(tmp_path: Path, monkeypatch) -> None:
    """No new stream ever comes: after the reconnect timeout the call ends as hung up, record and all."""
    from agent_voice_bridge.calls import live_call

    monkeypatch.setattr(live_call, "RECONNECT_TIMEOUT_SECS", 1.0)
    call = await call_the_menu(tmp_path, "3", then=[])
    assert len(call.result.stream_sids) == 1 and call.result.events_of("redirect_ended")
    assert call.finished == 1 and call.record is not None and call.record.outcome == "caller_hung_up"
    assert call.record.ended_at is not None


async def test_a_stage_presses_keys_with_pipecat_s_output_dtmf_frame() -> None:
    """A custom stage's OutputDTMFFrame is the call's send_digits: same switch, and the echo line goes on."""
    with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
        chain = (f"twilio: {{account_sid: {ACCOUNT}, auth_token: {TOKEN}, api_base_url: '{twilio.url}'}}\n"
                 "pipeline:\n  - twilio.input\n  - stages.keys:PressOnPound\n  - mulaw.decode\n"
                 "  - vad.interrupter: {start_secs: 0.15, stop_secs: 0.5}\n  - echo\n  - mulaw.encode\n"
                 "  - twilio.output\n")
        with LiveServer(chain) as server:
            result = await run_call(server.http_url, [
                Pause(0.3), Dtmf("#"), Until(lambda: bool(twilio.updates), timeout=10), Pause(1.0),
                Say(speech("hello-world")), WaitHeard(timeout=10), WaitQuiet(idle=0.8)],
                auth_token=TOKEN, redirects=twilio.redirects)
            server.wait_idle(finished=1)
            finished = server.calls.finished
    print(result.timeline())
    assert result.digits_played == "9" and len(result.stream_sids) == 2
    assert finished == 1
    back = result.events_of("connected")[1].t
    assert any(e.t > back for e in result.events_of("audio_start")), "the echo line answered on the new stream"


async def test_gemini_presses_keys_and_its_session_goes_on_across_the_switch() -> None:
    from fakes.gemini_live import FakeGeminiLive, GeminiScript
    from test_gemini_call import chain_yaml

    script = GeminiScript(tool_call={"name": "send_digits", "args": {"digits": "1#"}})
    async with FakeGeminiLive(script=script) as fake:
        with FakeTwilioRest(ACCOUNT, TOKEN) as twilio:
            chain = (f"twilio: {{account_sid: {ACCOUNT}, auth_token: {TOKEN}, api_base_url: '{twilio.url}'}}\n"
                     + chain_yaml(fake, turn_detection="model", vad=False, tools="[send_digits]"))
            with LiveServer(chain) as server:
                result = await run_call(server.http_url, [
                    Pause(0.3), Say(MENU, "the menu"), Until(lambda: bool(twilio.updates), timeout=15),
                    WaitHeard(timeout=15), WaitQuiet(idle=0.5)],
                    auth_token=TOKEN, redirects=twilio.redirects, custom_parameters={"topic": "billing"})
                server.wait_idle(finished=1)
        print(result.timeline())
        session = fake.sessions[-1]
    assert result.digits_played == "1#" and len(result.stream_sids) == 2
    response, = [r for body in session.tool_responses for r in body["functionResponses"]]
    assert response["name"] == "send_digits" and "Pressed 1 #" in str(response["response"])
    assert session.audio_ms() >= len(MENU) / 8, "the session that got the result is the one that heard the menu"
    back = result.events_of("connected")[1].t
    assert any(e.t >= back for e in result.events_of("audio_start")), "Gemini's answer was heard on the new stream"
    assert not session.protocol_errors
