"""Hostile peers for the hardening tests, run as a separate process (``python tests/hostile_peers.py KIND URL N SECS``).

A process of its own, so the flood costs the server what it would cost it in production
and not the test's own event loop (where the simulated caller keeps Twilio's clock).
Prints one JSON line per socket: how it ended (close code or "dropped") and what it sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from urllib.parse import urlsplit

import websockets

CONNECTED = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message() -> str:
    sid = "MZ" + uuid.uuid4().hex
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
        "accountSid": "AC" + "0" * 32, "streamSid": sid, "callSid": "CA" + uuid.uuid4().hex, "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, "customParameters": {}}})


MARK = json.dumps({"event": "mark", "mark": {"name": "0:99999:0"}})
DTMF = json.dumps({"event": "dtmf", "dtmf": {"digit": "5"}})


async def flood(url: str, prelude: list[str], messages: list[str], until: float) -> dict:
    """Send ``messages`` round and round until the server closes or ``until``; never answer the close early."""
    sent = 0
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        for message in prelude:
            await ws.send(message)
        try:
            while time.monotonic() < until:
                for message in messages:
                    await ws.send(message)
                sent += len(messages)
                await asyncio.sleep(0)
        except websockets.ConnectionClosed:
            pass
    return {"code": ws.close_code, "sent": sent}


async def slow_headers(url: str, until: float) -> dict:
    """Open a TCP connection and send a request's headers one line a second, never finishing them."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    lines = 0
    try:
        while time.monotonic() < until:
            await asyncio.sleep(1.0)
            writer.write(f"X-Slow-{lines}: y\r\n".encode())
            await writer.drain()
            lines += 1
            if reader.at_eof():
                break
        ended = "dropped" if reader.at_eof() else "open"
    except (ConnectionError, OSError):
        ended = "dropped"
    writer.close()
    return {"code": ended, "sent": lines}


async def main(kind: str, url: str, count: int, seconds: float) -> None:
    until = time.monotonic() + seconds
    if kind == "connected":
        jobs = [flood(url, [], [CONNECTED], until) for _ in range(count)]
    elif kind == "mark-dtmf":
        jobs = [flood(url, [CONNECTED, start_message()], [MARK, DTMF], until) for _ in range(count)]
    elif kind == "slow-headers":
        jobs = [slow_headers(url, until) for _ in range(count)]
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print("ready", flush=True)
    for outcome in await asyncio.gather(*jobs, return_exceptions=True):
        print(json.dumps(outcome if isinstance(outcome, dict) else {"code": repr(outcome), "sent": 0}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
