"""Voicemail: the ``voicemail`` stage through the real server and the simulated caller, and an AI stage's
``fallback: voicemail`` moving the caller there when the model cannot answer (at call start and mid-call).

The stored message is checked sample for sample: on the bridge's side the caller's μ-law is only decoded,
so a message must be one unbroken slice of what the simulated caller sent. A frame lost anywhere (the
handover from a failed AI to the voicemail included) would break that.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from agent_voice_bridge.assets import spoken
from agent_voice_bridge.audio import mulaw, prompts
from agent_voice_bridge.audio.resampler import PolyphaseResampler
from agent_voice_bridge.pipelines.chain import build_chain
from agent_voice_bridge.pipelines.errors import ConfigError
from agent_voice_bridge.pipelines.loader import load_text
from agent_voice_bridge.services import message_transcriber
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.storage.records import CallRecord, Message
from agent_voice_bridge.storage.report import call_report, message_line
from agent_voice_bridge.transports.simulated_caller import CallResult, Dtmf, Pause, Say, WaitHeard, WaitQuiet, run_call
from conftest import SPEECH_DIR, LiveServer, speech
from fakes.openai_realtime import FakeOpenAIRealtime

RATE = 8000
BEEP = mulaw.decode_array(mulaw.encode(prompts.tone())).astype(np.float64)
GREETING = speech("vm-goodbye").astype(np.float64)  # the test line's greeting, given to it as a 16 kHz WAV


def voicemail_chain(greeting_wav: Path | None, **params: object) -> str:
    if greeting_wav is not None:
        params["greeting_wav"] = str(greeting_wav)
    args = ", ".join(f"{k}: {v}" for k, v in params.items())
    return ("pipeline:\n  - twilio.input\n  - mulaw.decode\n  - vad.interrupter: {start_secs: 0.15, stop_secs: 0.5}\n"
            f"  - voicemail: {{{args}}}\n  - mulaw.encode\n  - twilio.output\n")


def storage(tmp: Path) -> str:
    return f"storage: {{url: 'sqlite:///{tmp}/calls.db', recordings: '{tmp}/recordings'}}\n"


def wav_16k(path: Path, pcm8k: np.ndarray) -> Path:
    """A 16 kHz WAV: the stage must resample the greeting to the line's 8 kHz."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(PolyphaseResampler(RATE, 16000).process(pcm8k.astype("<i2").tobytes()))
    return path


def read_message(message: Message) -> np.ndarray:
    with wave.open(message.audio_path, "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (1, RATE, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


def offset_in(sent: np.ndarray, piece: np.ndarray) -> float:
    """Where ``piece`` sits in ``sent``, sample for sample, in seconds on the caller's clock (fails if nowhere)."""
    loud = np.flatnonzero(np.abs(piece) > 300)
    assert len(loud), "the piece holds no speech"
    first = int(loud[0])
    probe = piece[first: first + 240]
    windows = np.lib.stride_tricks.sliding_window_view(sent, len(probe))
    for hit in np.flatnonzero((windows == probe).all(axis=1)):
        start = int(hit) - first
        if start >= 0 and np.array_equal(sent[start: start + len(piece)], piece):
            return start / RATE
    raise AssertionError("the message is not an unbroken slice of what the caller said")


def located(heard: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(seconds into ``heard`` where ``reference`` best matches, normalised correlation there)."""
    x = heard.astype(np.float64)
    corr = np.correlate(x, reference, mode="valid")
    at = int(np.argmax(corr))
    window = x[at: at + len(reference)]
    return at / RATE, float(corr[at] / (np.linalg.norm(window) * np.linalg.norm(reference) + 1e-9))


def poll(check: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    """Poll server state until ``check()`` is truthy (a deadline, not a sleep standing in for a wait)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} not within {timeout:g} s"
        time.sleep(0.05)
    return value


def the_message(server: LiveServer, result: CallResult) -> Message:
    messages = poll(lambda: server.db(CallStore.messages, result.call_sid), 10, "the message row")
    assert len(messages) == 1
    return messages[0]


# --------------------------------------------------------------------------- the voicemail line


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("voicemail")
    greeting = wav_16k(tmp / "greeting-16k.wav", speech("vm-goodbye"))
    yaml_text = storage(tmp) + voicemail_chain(greeting, silence_secs=1.0, wait_secs=3, max_seconds=2.5)
    with LiveServer(yaml_text, "voicemail-test.yaml") as server:
        yield server


@pytest.fixture(scope="module")
def silence_call(line: LiveServer) -> tuple[CallResult, Message]:
    steps = [WaitHeard(timeout=5), WaitQuiet(idle=0.3), Say(speech("hello-world")), WaitHeard(timeout=5),
             WaitQuiet(timeout=10), Pause(3.0)]  # the line hangs up before the pause is over
    with ThreadPoolExecutor(1) as pool:  # a loop of its own: pytest-asyncio may own this thread's
        result = pool.submit(asyncio.run, run_call(line.http_url, steps, from_number="+15550007777")).result()
    line.wait_idle()
    return result, the_message(line, result)


def test_greeting_beep_then_the_message_until_silence(line: LiveServer, silence_call) -> None:
    result, message = silence_call
    print(result.timeline())
    greeting_at, greeting_score = located(result.heard, GREETING)
    beep_at, beep_score = located(result.heard, BEEP)
    assert greeting_score > 0.9 and beep_score > 0.9, (greeting_score, beep_score)
    assert greeting_at < beep_at < result.utterances[0][0], "greeting, then the beep, then the caller spoke"
    audio = read_message(message)
    starts = offset_in(result.sent, audio)
    beep_end = beep_at + len(BEEP) / RATE
    assert beep_end - 0.02 <= starts <= beep_end + 0.3, "recording starts once the beep has played"
    onset, offset = result.utterances[0]
    ends = starts + len(audio) / RATE
    assert starts < onset and offset < ends <= offset + 1.2, "all the speech, and not the silence that ended it"
    assert message.ended_by == "silence" and message.duration_ms == pytest.approx(len(audio) / 8, abs=1)
    assert result.events_of("closed")[-1].detail.endswith("by server"), "thanked and hung up"
    thanks = mulaw.decode_array(spoken("voicemail_thanks"))[:8000].astype(np.float64)
    assert located(result.heard[int(offset * RATE):], thanks)[1] > 0.9, "the thanks was played after the message"
    listed = line.db(CallStore.recent_messages, 5)
    record, first = next((r, m) for r, m in listed if r.call_sid == result.call_sid)
    assert record.caller == "+15550007777" and first.id == message.id
    assert result.call_sid in message_line(record, first)
    assert message.audio_path in call_report(record, [], [first])


def test_the_command_line_lists_messages_and_shows_them_with_the_call(line: LiveServer, silence_call,
                                                                      tmp_path: Path, capsys) -> None:
    from agent_voice_bridge.cli import main as cli_main

    result, message = silence_call
    config = tmp_path / "same-database.yaml"
    config.write_text(f"storage: {{url: '{line.config.storage.url}'}}\npipeline: [twilio.input, echo, twilio.output]\n")
    capsys.readouterr()
    assert cli_main(["calls", "messages", "-c", str(config)]) == 0
    listing = capsys.readouterr().out
    assert result.call_sid in listing and "silence" in listing
    assert cli_main(["calls", "show", result.call_sid, "-c", str(config)]) == 0
    assert message.audio_path in capsys.readouterr().out


def test_the_message_is_transcribed(line: LiveServer, silence_call) -> None:
    if message_transcriber.model_path() is None:
        pytest.skip(f"no transcript: {message_transcriber.missing_reason()}")
    result, message = silence_call
    assert message.transcript is None or "hello" in message.transcript.lower(), "None until transcribed"
    transcribed = poll(lambda: line.db(CallStore.messages, result.call_sid)[0].transcript, 30, "the transcript")
    assert "hello world" in transcribed.lower().replace(",", "").replace("!", "")


async def test_a_key_press_ends_the_message(line: LiveServer) -> None:
    steps = [WaitHeard(timeout=5), WaitQuiet(idle=0.3), Say(speech("hello-world")), Dtmf("#"), WaitHeard(timeout=5)]
    result = await run_call(line.http_url, steps)
    line.wait_idle()
    message = the_message(line, result)
    audio = read_message(message)
    key = result.events_of("dtmf")[0].t
    assert message.ended_by == "key"
    assert abs(offset_in(result.sent, audio) + len(audio) / RATE - key) <= 0.1, "it ends at the key press"


async def test_max_seconds_ends_the_message(line: LiveServer) -> None:
    steps = [WaitHeard(timeout=5), WaitQuiet(idle=0.3), Say(speech("all-circuits-busy-now")),
             Say(speech("one-moment-please")), WaitHeard(timeout=5)]
    result = await run_call(line.http_url, steps)
    line.wait_idle()
    message = the_message(line, result)
    assert message.ended_by == "max_seconds" and message.duration_ms == pytest.approx(2500, abs=30)
    offset_in(result.sent, read_message(message))


async def test_hanging_up_mid_message_keeps_what_was_said(line: LiveServer) -> None:
    steps = [WaitHeard(timeout=5), WaitQuiet(idle=0.3), Say(speech("one-moment-please"))]
    result = await run_call(line.http_url, steps, tail=0.1)  # hangs up 0.1 s after speaking
    line.wait_idle()
    message = the_message(line, result)
    audio = read_message(message)
    starts = offset_in(result.sent, audio)
    onset, offset = result.utterances[0]
    assert message.ended_by == "hangup" and starts < onset and starts + len(audio) / RATE >= offset


# --------------------------------------------------------------------------- fallback: voicemail


def openai_chain(base_url: str, fallback: str) -> str:
    return ("pipeline:\n  - twilio.input\n"
            f"  - openai.realtime: {{api_key: test-key, audio_format: pcmu, base_url: '{base_url}', "
            f"fallback: '{fallback}'}}\n  - twilio.output\n")


async def test_unreachable_model_at_start_lands_the_caller_in_voicemail(tmp_path: Path) -> None:
    yaml_text = storage(tmp_path) + openai_chain("ws://127.0.0.1:9/v1/realtime", "voicemail")
    with LiveServer(yaml_text, str(tmp_path / "ai.yaml")) as server:
        steps = [WaitHeard(timeout=5), WaitQuiet(idle=0.3), Say(speech("hello-world"))]
        result = await run_call(server.http_url, steps, tail=0.2)
        server.wait_idle()
        message = the_message(server, result)
        record = server.db(CallStore.get_call, result.call_sid)
    print(result.timeline())
    default_greeting = mulaw.decode_array(spoken("voicemail_greeting")).astype(np.float64)
    assert located(result.heard, default_greeting[8000:16000])[1] > 0.9, "the built-in greeting played"
    audio = read_message(message)
    onset, _ = result.utterances[0]
    assert offset_in(result.sent, audio) < onset and message.ended_by == "hangup"
    assert record.outcome == "voicemail" and record.reason.startswith("backend_failure: ")


async def test_model_dying_mid_call_moves_the_caller_to_voicemail_losing_nothing(tmp_path: Path) -> None:
    fallback = tmp_path / "vm.yaml"
    fallback.write_text(voicemail_chain(wav_16k(tmp_path / "g.wav", speech("vm-goodbye")), silence_secs=1.0))
    # pace=0: the reply comes in one burst and the connection drops half-way through it, before the caller
    # (who talks on as soon as the reply starts playing) can be heard by the model and cancel the reply.
    async with FakeOpenAIRealtime(fail="drop_mid_response", reply_seconds=2.0, pace=0) as fake:
        yaml_text = storage(tmp_path) + openai_chain(fake.url, "vm.yaml")
        with LiveServer(yaml_text, str(tmp_path / "ai.yaml")) as server:
            steps = [WaitQuiet(idle=0.3), Say(speech("hello-world")), WaitHeard(timeout=5),
                     Say(speech("all-circuits-busy-now")), WaitQuiet(idle=0.3, timeout=10),
                     Say(speech("one-moment-please")), WaitHeard(timeout=5)]
            result = await run_call(server.http_url, steps)
            server.wait_idle()
            message = the_message(server, result)
            record = server.db(CallStore.get_call, result.call_sid)
        session = fake.sessions[0]
    print(result.timeline())
    audio = read_message(message)
    starts = offset_in(result.sent, audio)
    ai_heard = mulaw.decode_array(bytes(session.audio_in_raw))
    ai_until = offset_in(result.sent, ai_heard) + len(ai_heard) / RATE  # the end of what the model received
    print(f"model received up to {ai_until:.3f} s; the message starts at {starts:.3f} s")
    assert 0 <= starts - ai_until <= 0.1, "the audio between the failure and the voicemail is in the message"
    print(f"utterances {result.utterances}")
    assert result.utterances[0][1] < starts <= result.utterances[1][0], "what was said over the greeting is kept"
    assert starts + len(audio) / RATE >= result.utterances[-1][1], "and holds what was said after the beep"
    assert message.ended_by == "silence"
    assert record.outcome == "voicemail" and "openai" in record.reason.lower()


# --------------------------------------------------------------------------- store and configuration


async def test_message_store_on_both_databases(storage_url: str) -> None:
    from datetime import UTC, datetime

    store = CallStore(storage_url)
    await store.migrate()
    try:
        await store.start_call(CallRecord("CAvm1", datetime.now(UTC), caller="+15550001111"))
        first = await store.add_message("CAvm1", Message(datetime.now(UTC), 1500.0, "/r/CAvm1-message.wav", "key"))
        other = await store.add_message("CAvm2", Message(datetime.now(UTC), 900.0, "/r/CAvm2-message.wav", "silence"))
        await store.set_message_transcript(first, "hello world")
        (kept,) = await store.messages("CAvm1")
        recent = await store.recent_messages(5)
        forgotten = await store.forget("+15550001111")
        left = await store.recent_messages(5)
    finally:
        await store.close()
    assert (kept.id, kept.transcript, kept.ended_by, kept.call_sid) == (first, "hello world", "key", "CAvm1")
    assert [m.id for _, m in recent] == [other, first] and recent[1][0].caller == "+15550001111"
    assert "/r/CAvm1-message.wav" in forgotten
    assert [m.id for _, m in left] == [other]


def test_a_bad_fallback_is_a_config_error_naming_the_stage(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        build_chain(load_text(openai_chain("ws://x", "nowhere.yaml"), str(tmp_path / "ai.yaml")))
    assert f"{tmp_path / 'ai.yaml'}:3: stage 2 (openai.realtime): fallback 'nowhere.yaml'" in str(missing.value)
    loops = tmp_path / "loops.yaml"
    loops.write_text(openai_chain("ws://x", "voicemail"))
    with pytest.raises(ConfigError) as nested:
        build_chain(load_text(openai_chain("ws://x", "loops.yaml"), str(tmp_path / "ai.yaml")))
    assert "names a fallback of its own" in str(nested.value)
    chain = build_chain(load_text(openai_chain("ws://x", "voicemail"), "ai.yaml"))
    assert chain.fallback is not None and [s.name for s in chain.fallback.stages][3] == "voicemail"


def test_greeting_text_needs_a_synthesiser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    yaml_text = voicemail_chain(None, greeting_text="'Leave a message.'")
    if prompts.synthesizer() is not None:
        chain = build_chain(load_text(yaml_text, "vm.yaml"))
        chain.warm_up()
        greeting, words = chain.stages[3].params.greeting()
        assert words == "Leave a message." and 0.5 < len(greeting) / 2 / RATE < 3
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as error:
        build_chain(load_text(yaml_text, "vm.yaml"))
    assert "vm.yaml:5: stage 4 (voicemail)" in str(error.value) and "espeak-ng" in str(error.value)


def test_ready_voicemail_chain_is_the_built_in_one() -> None:
    root = SPEECH_DIR.parent.parent.parent
    assert (root / "pipelines" / "voicemail.yaml").read_text() == (
        root / "src" / "agent_voice_bridge" / "defaults" / "voicemail.yaml").read_text()


def test_speech_onset_walks_back_to_the_last_quiet_stretch() -> None:
    from agent_voice_bridge.processors.voicemail import speech_onset

    quiet, loud = np.zeros(4000, dtype="<i2"), speech("hello-world")[:8000]
    pcm = np.concatenate([quiet, loud]).astype("<i2").tobytes()
    onset = speech_onset(pcm, start_secs=0.15) / 2 / RATE  # the VAD confirmed at the very end
    first_loud = 0.5 + np.flatnonzero(np.abs(loud) > 300)[0] / RATE
    assert first_loud - 0.2 <= onset <= first_loud, (onset, first_loud)
    assert speech_onset(loud.astype("<i2").tobytes(), 0.15) == 0, "no quiet stretch: keep all of it"
