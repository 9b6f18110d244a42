"""Observability: /metrics moves during a call, logs carry the call SID, workers aggregate."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from loguru import logger

from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard, WaitQuiet, run_call
from conftest import ECHO_YAML, LiveServer, free_port, speech

LIVE_DEFAULT = 'voice_bridge_live_calls{line="default"}'
"""A server run from one pipeline file has one line, named default."""
SAMPLE = re.compile(r'^(voice_bridge_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$', re.M)


def samples(text: str) -> dict[str, float]:
    return {f"{name}{labels or ''}": float(value) for name, labels, value in SAMPLE.findall(text)}


async def scrape(url: str) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_metrics_move_during_a_call_and_logs_carry_the_call_sid() -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{extra[call_sid]} | {message}", level="INFO")
    try:
        with LiveServer(ECHO_YAML) as server:
            url = f"http://127.0.0.1:{server.port}/metrics"
            before = await scrape(url)
            steps = [Pause(0.3), Say(speech("all-circuits-busy-now")), WaitHeard(after=0.4),
                     Say(speech("vm-goodbye")), WaitQuiet(idle=0.8)]
            call = asyncio.ensure_future(run_call(server.ws_url, steps))
            during = None
            while not call.done():
                during = await scrape(url)
                if during.get(LIVE_DEFAULT, 0) >= 1:
                    break
                await asyncio.sleep(0.05)
            result = await call
            await asyncio.to_thread(server.wait_idle, 1)
            after = await scrape(url)
    finally:
        logger.remove(sink)
    assert during is not None and during[LIVE_DEFAULT] == 1
    assert after[LIVE_DEFAULT] == 0

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta('voice_bridge_calls_total{line="default",outcome="caller_hung_up"}') == 1
    assert delta('voice_bridge_barge_ins_total{line="default"}') == 1
    assert delta('voice_bridge_first_reply_seconds_count{line="default"}') == 1
    assert delta('voice_bridge_barge_in_seconds_count{line="default"}') == 1
    # Over the AI a run must last backchannel_secs (0.5) before it interrupts (issue 19): the clear comes then.
    assert delta('voice_bridge_barge_in_seconds_bucket{le="0.75",line="default"}') == 1, "clear within 750 ms"

    sid = result.call_sid
    call_lines = [line for line in lines if line.startswith(f"{sid} |")]
    assert any("started" in line for line in call_lines)
    assert any("barge-in" in line for line in call_lines)
    summary = [line for line in call_lines if f"call {sid} ended:" in line]
    assert len(summary) == 1 and "outcome=caller_hung_up" in summary[0] and "barge_ins=1" in summary[0]


async def test_every_per_call_series_is_labelled_by_the_calls_line(tmp_path: Path) -> None:
    """Two echo lines; the support caller talks over the echo, the sales caller does not: each line's series
    move for its own calls only, and the live-calls gauge says which line the running call is on."""
    from test_lines import SALES, SUPPORT, write_lines

    path = write_lines(tmp_path)
    (tmp_path / "pipelines" / "support.yaml").write_text(ECHO_YAML)
    with LiveServer(config_file=path) as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        before = await scrape(url)
        quiet = [Pause(0.3), Say(speech("hello-world")), WaitQuiet(idle=0.8)]
        talks_over = [Pause(0.3), Say(speech("all-circuits-busy-now")), WaitHeard(after=0.4),
                      Say(speech("vm-goodbye")), WaitQuiet(idle=0.8)]
        await run_call(server.http_url, quiet, to_number=SALES)
        support = asyncio.ensure_future(run_call(server.http_url, talks_over, to_number=SUPPORT))
        during = None
        while not support.done():
            during = await scrape(url)
            if during.get('voice_bridge_live_calls{line="support"}', 0) >= 1:
                break
            await asyncio.sleep(0.05)
        await support
        await asyncio.to_thread(server.wait_idle, 2)
        after = await scrape(url)
    assert during is not None and during['voice_bridge_live_calls{line="support"}'] == 1
    assert during['voice_bridge_live_calls{line="sales"}'] == 0, "the sales call had ended"

    def delta(name: str, line: str, **labels: str) -> float:
        shown = ",".join(f'{k}="{v}"' for k, v in sorted({**labels, "line": line}.items()))  # as exposed
        return after.get(f"{name}{{{shown}}}", 0.0) - before.get(f"{name}{{{shown}}}", 0.0)

    for line in ("sales", "support"):
        assert delta("voice_bridge_calls_total", line, outcome="caller_hung_up") == 1, line
        assert delta("voice_bridge_first_reply_seconds_count", line) == 1, line
        assert after[f'voice_bridge_live_calls{{line="{line}"}}'] == 0
    assert (delta("voice_bridge_barge_ins_total", "sales"), delta("voice_bridge_barge_ins_total", "support")) == (0, 1)
    assert delta("voice_bridge_barge_in_seconds_count", "support") == 1
    assert delta("voice_bridge_barge_in_seconds_count", "sales") == 0


async def test_refusals_are_counted_by_reason() -> None:
    yaml_text = "twilio: {auth_token: tok}\n" + ECHO_YAML.split("twilio:")[0] + "pipeline:" + ECHO_YAML.split("pipeline:")[1]
    with LiveServer(yaml_text) as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        before = await scrape(url)
        async with httpx.AsyncClient() as http:
            assert (await http.post(server.http_url, data={"CallSid": "CA1", "From": "+1555"})).status_code == 403
        after = await scrape(url)
    key = 'voice_bridge_refused_calls_total{reason="signature"}'
    assert after[key] - before.get(key, 0.0) == 1


async def test_two_workers_report_every_call(tmp_path: Path) -> None:
    config = tmp_path / "echo.yaml"
    config.write_text(ECHO_YAML)
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    server = subprocess.Popen([sys.executable, "-m", "agent_voice_bridge.cli", "serve", "-c", str(config),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level", "warning"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=tmp_path)  # its call records (./voice-bridge.db) stay in the test's folder
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"{base}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                await asyncio.sleep(0.1)
        calls = [run_call(f"ws://127.0.0.1:{port}/media-stream", [Say(speech("vm-goodbye")), WaitQuiet(idle=0.6)])
                 for _ in range(4)]
        await asyncio.gather(*calls)
        pids, totals = set(), set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:  # fresh connections land on either worker
            async with httpx.AsyncClient() as fresh:
                pids.add((await fresh.get(f"{base}/healthz")).json()["pid"])
                text = (await fresh.get(f"{base}/metrics")).text
            totals.add(sum(v for k, v in samples(text).items() if k.startswith("voice_bridge_calls_total")))
        assert totals == {4.0}, f"every scrape counts all four calls, whichever worker answers: {totals}"
        assert len(pids) == 2, "both workers answered"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
