"""Issue 21: what an unauthenticated or abusive socket may cost the server, and a real call beside it.

Each rule against the real server (uvicorn in a thread, the echo chain, raw sockets on
127.0.0.1), then a real call with real speech next to each attack, compared with a
quiet run of the same call.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import websockets
from loguru import logger

from agent_voice_bridge.security.stream_tokens import StreamTokens
from agent_voice_bridge.transports.simulated_caller import CallResult, Pause, Say, WaitQuiet, run_call
from conftest import ECHO_YAML, LiveServer, speech
from test_hostile_streams import CONNECTED, hostile, start_message

SPEECH_RMS = 32768 * 10 ** (-40 / 20)
MARK = json.dumps({"event": "mark", "mark": {"name": "0:99999:0"}})
DTMF = json.dumps({"event": "dtmf", "dtmf": {"digit": "5"}})


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer(ECHO_YAML, "pipelines/echo.yaml") as live:
        yield live


@pytest.fixture(scope="module")
def token_server() -> Iterator[LiveServer]:
    """Checks on (an auth token): a stream needs the token /incoming handed out."""
    with LiveServer(ECHO_YAML, "pipelines/echo.yaml", env={"TWILIO_AUTH_TOKEN": "hardening-secret"}) as live:
        yield live


# --------------------------------------------------------------------------- before start: exactly the protocol


async def test_repeated_connected_before_start_closes_1008(server: LiveServer) -> None:
    refused = server.calls.refused
    outcome = await hostile(server.ws_url, [CONNECTED] * 500)
    print(f"connected flood: closed {outcome.code} after {outcome.seconds * 1000:.0f} ms, {outcome.sent} sent")
    assert outcome.code == 1008 and outcome.seconds < 3
    assert server.calls.refused == refused + 1


async def test_more_than_the_pre_start_byte_budget_closes_1008(server: LiveServer) -> None:
    big_start = json.loads(start_message())
    big_start["start"]["customParameters"] = {f"p{i}": "x" * 500 for i in range(40)}  # 20 KB
    outcome = await hostile(server.ws_url, [json.dumps(big_start)], prelude=[CONNECTED])
    assert outcome.code == 1008


# --------------------------------------------------------------------------- after start: a budget per type


@pytest.mark.parametrize("message", [MARK, DTMF, CONNECTED], ids=["mark", "dtmf", "connected"])
async def test_a_flood_of_any_type_on_a_started_stream_closes_1008(server: LiveServer, message: str) -> None:
    outcome = await hostile(server.ws_url, [message] * 2000, prelude=[CONNECTED, start_message()])
    print(f"flood: closed {outcome.code} after {outcome.seconds * 1000:.0f} ms, {outcome.sent} sent")
    assert outcome.code == 1008 and outcome.seconds < 3


# --------------------------------------------------------------------------- a closed flooder is no longer read


async def test_a_closed_peer_that_never_answers_is_dropped_within_two_seconds(server: LiveServer) -> None:
    """A raw client floods ``connected`` and never reads: the server must stop reading it, not parse for 10 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /media-stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    payload = CONNECTED.encode()
    frame = bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload  # masked with a zero key
    began = time.monotonic()
    dropped = None
    while time.monotonic() - began < 15:
        try:
            writer.write(frame * 200)
            await asyncio.wait_for(writer.drain(), 0.5)
        except (ConnectionError, OSError):
            dropped = time.monotonic() - began
            break
        except TimeoutError:
            pass  # the server stopped reading: its buffers are full
        if writer.transport.is_closing():
            dropped = time.monotonic() - began
            break
        await asyncio.sleep(0.01)
    writer.transport.abort()
    print(f"never-answering flooder dropped after {dropped} s")
    assert dropped is not None and dropped < 4, "the server kept reading a peer it had closed"


# --------------------------------------------------------------------------- stream tokens


@pytest.mark.parametrize("token", ["١٢٣.abc", "9" * 5000 + ".abc", "1." + "A" * 5000],
                         ids=["arabic-digits", "5000-digits", "long-mac"])
def test_malformed_tokens_are_refusals_not_exceptions(token: str) -> None:
    assert StreamTokens("secret", 60).check("CA1", token) == "malformed stream token"


async def test_a_malformed_token_is_a_counted_1008(token_server: LiveServer) -> None:
    from agent_voice_bridge import metrics

    def refusals() -> float:
        return metrics.REFUSED.labels("stream_token")._value.get()

    for token in ("١٢٣.abc", "9" * 5000 + ".abc"):
        refused, counted = token_server.calls.refused, refusals()
        start = json.loads(start_message())
        start["start"]["customParameters"] = {"streamToken": token}
        outcome = await hostile(token_server.ws_url, [json.dumps(start)], prelude=[CONNECTED])
        assert outcome.code == 1008, f"{token[:10]}…: closed {outcome.code}"
        assert token_server.calls.refused == refused + 1 and refusals() == counted + 1


# --------------------------------------------------------------------------- logs


async def test_protocol_values_are_escaped_and_capped_in_the_log(server: LiveServer) -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{extra[call_sid]} {message}")
    try:
        start = json.loads(start_message())
        forged = "CA1\r\n2026-01-01 00:00:00 | INFO | forged line"
        start["start"]["streamSid"] = forged + "x" * 10_000  # within the pre-start budget
        start["start"]["customParameters"] = {"caller": "+1\nforged caller"}
        async with websockets.connect(server.ws_url, max_size=None) as ws:
            await ws.send(CONNECTED)
            await ws.send(json.dumps(start))
            await ws.send(json.dumps({"event": "nonsense\r\nforged " + "y" * 50_000}))
            await ws.send(json.dumps({"event": "stop", "stop": {}}))
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
        await asyncio.to_thread(server.wait_idle)
    finally:
        logger.remove(sink)
    text = "".join(lines)
    assert "forged" in text, "the values were logged at all"
    for line in text.splitlines():
        assert "forged" not in line or not line.startswith("2026-01-01"), f"forged line: {line[:100]}"
        assert not line.startswith("forged"), f"forged line: {line[:100]}"
        assert len(line) < 2000, f"a {len(line)}-character log line"


# --------------------------------------------------------------------------- uvicorn's limits


async def test_media_stream_declines_permessage_deflate(server: LiveServer) -> None:
    async with websockets.connect(server.ws_url, compression="deflate") as ws:
        assert ws.protocol.extensions == [], f"negotiated {ws.protocol.extensions}"


async def test_slow_headers_are_cut_off(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_voice_bridge import connection_limits

    monkeypatch.setattr(connection_limits.LimitedH11, "header_timeout", 1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    began = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    closed_after = None
    for i in range(8):
        try:
            data = await asyncio.wait_for(reader.read(1000), 0.5)
            if data == b"":
                closed_after = time.monotonic() - began
                break
        except TimeoutError:
            writer.write(f"X-Slow-{i}: y\r\n".encode())
        except ConnectionError:
            closed_after = time.monotonic() - began
            break
    writer.close()
    print(f"slow headers cut off after {closed_after} s")
    assert closed_after is not None and closed_after < 3


def test_the_connection_cap_refuses_websocket_upgrades_too() -> None:
    from agent_voice_bridge.serving import DrainingServer, uvicorn_config

    live = LiveServer(ECHO_YAML, "pipelines/echo.yaml")
    live.server = DrainingServer(uvicorn_config(live.app, "127.0.0.1", live.port, max_connections=3), 1.0)
    with live:
        held = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(3)]
        try:
            with pytest.raises(websockets.InvalidStatus) as refused:
                asyncio.run(websockets.connect(live.ws_url, open_timeout=5).__aenter__())
            assert refused.value.response.status_code == 503
        finally:
            for s in held:
                s.close()


# --------------------------------------------------------------------------- a real call beside each attack


def _loud_seconds(result: CallResult) -> float:
    heard = result.heard[: len(result.heard) // 160 * 160].astype(float).reshape(-1, 160)
    return float(np.count_nonzero(np.sqrt((heard ** 2).mean(1)) > SPEECH_RMS) * 0.02)


async def _call(server: LiveServer) -> CallResult:
    return await run_call(server.ws_url, [Pause(0.5), Say(speech("hello-world")), WaitQuiet(idle=0.8)])


@pytest.fixture(scope="module")
def quiet(server: LiveServer) -> CallResult:
    result = asyncio.run(_call(server))
    print("quiet run:", result.timeline())
    return result


ATTACKS = {"connected-floods": ("connected", 4), "mark-dtmf-flood": ("mark-dtmf", 4), "slow-headers": ("slow-headers", 20),
           "oversized-bodies": ("big-bodies", 4)}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_real_call_beside_an_attack_sounds_like_a_quiet_one(server: LiveServer, quiet: CallResult,
                                                                    attack: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    kind, count = ATTACKS[attack]
    if kind == "slow-headers":
        from agent_voice_bridge import connection_limits

        monkeypatch.setattr(connection_limits.LimitedH11, "header_timeout", 2.0)  # the attack lasts 8 s
    peers = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("hostile_peers.py")), kind, server.ws_url, str(count), "8",
        stdout=asyncio.subprocess.PIPE)
    assert peers.stdout is not None
    assert (await peers.stdout.readline()).strip() == b"ready"
    result = await _call(server)
    out, _ = await peers.communicate()
    outcomes = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    print(result.timeline())
    print(f"{attack}: {outcomes}")
    latency, quiet_latency = result.reply_latencies()[0], quiet.reply_latencies()[0]
    print(f"{attack}: reply after {latency:.3f} s (quiet {quiet_latency:.3f} s), heard {_loud_seconds(result):.2f} s "
          f"loud (quiet {_loud_seconds(quiet):.2f} s), marks {len(result.marks_echoed)}/{result.marks_received}")
    assert result.close_code == 1000
    assert not math.isnan(latency) and latency <= quiet_latency + 0.3
    assert _loud_seconds(result) >= 0.8 * _loud_seconds(quiet), "the reply was not heard in full"
    assert result.marks_received > 0 and len(result.marks_echoed) == result.marks_received
    assert len(result.clears) == len(quiet.clears), "a false barge-in"
    if kind == "big-bodies":  # 413 unread; a reset racing the 413 to a writer still sending is a refusal too
        codes = [c for o in outcomes for c in (o["code"] if isinstance(o["code"], list) else [o["code"]])]
        assert set(codes) <= {413, "dropped"} and 413 in codes, f"{attack}: {outcomes}"
        return
    expected = "dropped" if kind == "slow-headers" else 1008  # slow sockets must not pile up either
    assert all(o["code"] == expected for o in outcomes), f"{attack}: {outcomes}"
