"""Ending calls politely: SIGTERM drains live calls, then says goodbye; long calls hit a spoken time limit.

The shutdown tests run the real ``voice-bridge serve`` as a subprocess and send
it a real SIGTERM; the caller is the simulated Twilio caller speaking real speech.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import yaml

from agent_voice_bridge.assets import spoken
from agent_voice_bridge.audio import mulaw
from agent_voice_bridge.transports.simulated_caller import CallResult, Pause, Say, WaitQuiet, run_call
from conftest import LiveServer, free_port, speech
from test_security import ServeProcess, assert_echoed, bridge_yaml

TALKING = np.concatenate([speech(name) for name in
                          ("all-circuits-busy-now", "one-moment-please", "hello-world", "vm-goodbye")] * 2)
"""About 11 s of continuous real speech: a caller who does not stop talking."""


def echo_config(tmp_path: Path, **server: float) -> Path:
    doc = yaml.safe_load(bridge_yaml())
    doc["server"].update(server)
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def health(base: str) -> dict:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(base + "/healthz")).json()


def played(heard: np.ndarray, name: str) -> tuple[float, float]:
    """Where the bridge's spoken line ``name`` starts in what the caller heard, and how much of it was heard.

    Sample-exact: the caller's playback decodes exactly the μ-law bytes it got, and
    after the bridge's ``clear`` the line starts on a 20 ms frame boundary.
    """
    clip = mulaw.decode_array(spoken(name))
    probe = clip[:8000]  # the first second, speech included, so silence alone cannot match
    for start in range(0, len(heard) - len(probe) + 1, 160):
        if np.array_equal(heard[start : start + len(probe)], probe):
            n = min(len(clip), len(heard) - start)
            same = heard[start : start + n] == clip[:n]
            matched = n if same.all() else int(np.argmin(same))
            return start / 8000, matched / 8000
    raise AssertionError(f"the caller never heard the first second of {name}")


def ended_by_server(result: CallResult) -> None:
    closed = result.events_of("closed")[-1]
    assert closed.detail == "code 1000 by server", closed.detail
    assert result.close_code == 1000
    (_, offset), *_ = result.utterances
    assert offset < len(TALKING) / 8000, "the caller was still talking when the server ended the call"


async def test_sigterm_refuses_new_calls_and_lets_the_live_call_finish(tmp_path: Path) -> None:
    server = ServeProcess(echo_config(tmp_path, drain_seconds=10), free_port())
    try:
        await asyncio.to_thread(server.wait_ready)
        assert "checks are OFF" in server.output(), "without an auth token the server says so at start"
        began = time.monotonic()
        call = asyncio.create_task(run_call(f"ws://127.0.0.1:{server.port}/media-stream",
                                            [Pause(2.0), Say(speech("hello-world")), WaitQuiet(idle=0.8)]))
        await poll(lambda: _live_calls(server.base, 1), 10, "the call to go live")
        server.proc.send_signal(signal.SIGTERM)
        sigterm = time.monotonic()
        await poll(lambda: _status(server.base, "draining"), 5, "the server to start draining")
        async with httpx.AsyncClient(timeout=5) as client:
            refused = await client.post(server.base + "/incoming", data={"CallSid": "CAnew", "From": "+15550100002"})
        assert refused.status_code == 503, "Twilio must go to the number's fallback URL"
        assert server.proc.poll() is None

        result = await call
        call_done = time.monotonic()
        assert sigterm < result.started_at + result.utterances[0][0], "SIGTERM came after the caller began speaking"
        assert_echoed(result)  # heard back in full, and the caller hung up (stop, 1000)
        returncode = await asyncio.to_thread(server.proc.wait, 10)
        exited = time.monotonic()
        print(f"SIGTERM at +{sigterm - began:.2f} s; call ended {call_done - sigterm:.2f} s after it; "
              f"process exited {exited - call_done:.2f} s after the call ({exited - sigterm:.2f} s after SIGTERM)")
        assert returncode == 0
        assert exited - call_done < 3.0
        assert exited - sigterm < 10, "it exited because the call ended, not because drain_seconds ran out"
        log = server.output()
        assert "1 live call(s) may run" in log and "drained" in log
        assert "ending (server shutting down)" not in log, "the call was not cut short"
    finally:
        await asyncio.to_thread(server.stop)


async def test_after_drain_seconds_the_server_ends_the_call_with_a_goodbye(tmp_path: Path) -> None:
    server = ServeProcess(echo_config(tmp_path, drain_seconds=1), free_port())
    try:
        await asyncio.to_thread(server.wait_ready)
        call = asyncio.create_task(run_call(f"ws://127.0.0.1:{server.port}/media-stream",
                                            [Pause(0.3), Say(TALKING, "talking on")]))
        await poll(lambda: _live_calls(server.base, 1), 10, "the call to go live")
        server.proc.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        result = await call
        sigterm = sigterm_at - result.started_at  # on the caller's clock
        print(result.timeline())
        ended_by_server(result)
        at, seconds = played(result.heard, "goodbye_restart")
        print(f"SIGTERM at ~{sigterm:.2f} s; goodbye from {at:.2f} s, {seconds:.2f} s of it heard")
        assert 0.8 <= at - sigterm <= 2.5, "the goodbye starts once drain_seconds (1 s) have passed"
        assert seconds >= 1.0
        returncode = await asyncio.to_thread(server.proc.wait, 10)
        assert returncode == 0
        assert "ending (server shutting down)" in server.output()
    finally:
        await asyncio.to_thread(server.stop)


async def test_max_call_seconds_ends_the_call_with_the_time_limit_goodbye() -> None:
    doc = yaml.safe_load(bridge_yaml(security={"max_call_seconds": 3}))
    with LiveServer(yaml.safe_dump(doc)) as server:
        result = await run_call(server.ws_url, [Pause(0.3), Say(TALKING, "talking on")])
        print(result.timeline())
        ended_by_server(result)
        at, seconds = played(result.heard, "goodbye_time_limit")
        print(f"time-limit goodbye from {at:.2f} s, {seconds:.2f} s of it heard")
        assert 2.9 <= at <= 4.0
        assert seconds >= 4.5, "the whole goodbye is played before the server hangs up"
        await asyncio.to_thread(server.wait_idle, 1)


async def _live_calls(base: str, count: int) -> bool:
    return (await health(base))["live_calls"] == count


async def _status(base: str, status: str) -> bool:
    return (await health(base))["status"] == status
