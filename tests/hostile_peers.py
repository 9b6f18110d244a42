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


BIG_BODY_BYTES = 48 * 1024 * 1024


async def big_bodies(url: str, chunked: bool, until: float) -> dict:
    """POST /incoming a 48 MB multipart form, again and again: with Content-Length, or chunked without one.

    The server must answer 413 without reading it; a reader runs beside the writer so the answer is seen
    the moment it comes (and the writer stops), as a client that honours an early response would.
    """
    parts = urlsplit(url)
    boundary = uuid.uuid4().hex
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BIG_BODY_BYTES}"
    head = (f"POST /incoming HTTP/1.1\r\nHost: {parts.hostname}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n{framing}\r\n\r\n").encode()
    piece = (f'--{boundary}\r\nContent-Disposition: form-data; name="From"\r\n\r\n').encode() + b"A" * 65536
    codes, sent = [], 0

    async def write(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        written = 0
        while written < BIG_BODY_BYTES:
            data = piece[: BIG_BODY_BYTES - written]
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
            await writer.drain()
            written += len(data)
            sent += len(data)
        if chunked:
            writer.write(b"0\r\n\r\n")

    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(head)
        sender = asyncio.ensure_future(write(writer))
        try:
            status = await asyncio.wait_for(reader.readline(), 10)
            codes.append(int(status.split()[1]) if status else "dropped")
        except (ConnectionError, OSError, asyncio.TimeoutError, IndexError, ValueError):
            codes.append("dropped")
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
    return {"code": codes[0] if len(set(codes)) == 1 else codes, "sent": sent, "requests": len(codes)}


async def main(kind: str, url: str, count: int, seconds: float) -> None:
    until = time.monotonic() + seconds
    if kind == "connected":
        jobs = [flood(url, [], [CONNECTED], until) for _ in range(count)]
    elif kind == "mark-dtmf":
        jobs = [flood(url, [CONNECTED, start_message()], [MARK, DTMF], until) for _ in range(count)]
    elif kind == "big-bodies":
        http_url = url.replace("ws://", "http://", 1)
        jobs = [big_bodies(http_url, chunked=i % 2 == 1, until=until) for i in range(count)]
    elif kind == "slow-headers":
        jobs = [slow_headers(url, until) for _ in range(count)]
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print("ready", flush=True)
    for outcome in await asyncio.gather(*jobs, return_exceptions=True):
        print(json.dumps(outcome if isinstance(outcome, dict) else {"code": repr(outcome), "sent": 0}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
