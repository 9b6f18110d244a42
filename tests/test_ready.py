"""What ``serve`` says at start: one "ready" line with the URLs once every worker answers, and ``check``
(and ``serve``) naming the endpoint an AI stage will use when ``base_url`` or an SDK endpoint variable
moves it off the provider's own (issue 22, item 9)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from conftest import ECHO_YAML, free_port, run_cli
from test_security import ServeProcess

GEMINI_YAML = ECHO_YAML.replace("  - echo\n", "  - gemini.live: {api_key: test-key}\n")


async def test_one_ready_line_with_the_urls_once_both_workers_answer(tmp_path: Path) -> None:
    config = tmp_path / "echo.yaml"
    config.write_text(ECHO_YAML)
    port = free_port()
    server = ServeProcess(config, port, "--workers", "2", "--host", "127.0.0.1")
    try:
        deadline = time.monotonic() + 90
        while "voice-bridge: ready" not in server.output():
            assert server.proc.poll() is None and time.monotonic() < deadline, server.output()
            await asyncio.sleep(0.1)
        output = server.output()
        base = f"http://127.0.0.1:{port}"
        ready = [line for line in output.splitlines() if line.startswith("voice-bridge: ready")]
        assert ready == [f"voice-bridge: ready, 2 workers answering: Twilio webhook {base}/incoming, media stream "
                         f"ws://127.0.0.1:{port}/media-stream, softphone {base}/phone, {base}/healthz, "
                         f"{base}/metrics"], output
        started = [i for i, line in enumerate(output.splitlines()) if "call records:" in line]
        assert len(started) == 2 and max(started) < output.splitlines().index(ready[0]), (
            "the ready line comes after both workers have started\n" + output)
    finally:
        server.stop()


@pytest.mark.parametrize("stage, env, expected", [
    ("gemini.live: {api_key: test-key}", {"GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9/"},
     "stage 5 (gemini.live): endpoint http://127.0.0.1:9/ (GOOGLE_GEMINI_BASE_URL)"),
    ("gemini.live: {api_key: test-key, base_url: 'https://u:pw@proxy.example/'}", {},
     "stage 5 (gemini.live): endpoint https://u:***@proxy.example/ (base_url)"),
], ids=["sdk-variable", "base-url-masked"])
async def test_check_names_the_endpoint_an_ai_stage_will_use(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch, stage: str,
                                                             env: dict[str, str], expected: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "gemini.yaml"
    path.write_text(ECHO_YAML.replace("  - echo\n", f"  - {stage}\n"))
    assert await run_cli("check", "-c", str(path)) == 0
    stage_line = ECHO_YAML.splitlines().index("  - echo") + 1
    assert f"{path}:{stage_line}: {expected}" in capsys.readouterr().out


async def test_check_says_when_an_endpoint_variable_does_not_reach_the_stage(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    path = tmp_path / "openai.yaml"
    path.write_text("pipeline:\n  - twilio.input\n  - openai.realtime: {api_key: k, audio_format: pcmu}\n"
                    "  - twilio.output\n")
    assert await run_cli("check", "-c", str(path)) == 0
    assert (f"{path}:3: stage 2 (openai.realtime): endpoint wss://api.openai.com/v1/realtime (OPENAI_BASE_URL "
            "is set, but openai.realtime does not read it: set base_url)") in capsys.readouterr().out
