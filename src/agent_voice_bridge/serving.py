"""Running the app under uvicorn, with a shutdown that lets calls finish.

uvicorn's own shutdown closes every WebSocket with 1012 at once: on a phone
bridge that is every caller hung up mid-sentence. On SIGTERM this server first
stops taking calls (``/incoming`` answers 503, so Twilio tries the number's
fallback URL), lets live calls run for up to ``server.drain_seconds``, ends the
rest with a spoken goodbye, and only then lets uvicorn exit.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI
from loguru import logger

from agent_voice_bridge.connection_limits import BoundedCloseWebSocket, http_protocol
from agent_voice_bridge.pipelines.config import TlsConfig

LOG_LEVEL_ENV = "VOICE_BRIDGE_LOG_LEVEL"
MAX_MESSAGE_BYTES = 65536
"""Twilio's messages are a few hundred bytes; anything near this is not Twilio (closed with 1009)."""


MAX_CONNECTIONS = 1000
"""``server.max_connections``' default: sockets of any kind (calls, webhooks, idle) before new ones get 503."""
MAX_HEADER_BYTES = 16384
"""A request's headers (h11's incomplete-event limit): Twilio's are well under 2 KB."""
KEEP_ALIVE_SECONDS = 5


def uvicorn_config(app: FastAPI | str, host: str, port: int, *, max_connections: int | None = MAX_CONNECTIONS,
                   **kwargs) -> uvicorn.Config:
    """The one uvicorn configuration, used by ``serve`` and by the tests' live server alike.

    proxy_headers=False: uvicorn would otherwise take X-Forwarded-Proto from any local peer and change the
    URL a Twilio signature is checked against; only ``server.trust_proxy`` decides whether those headers count.
    No permessage-deflate: μ-law barely compresses, and inflating what any client sends costs CPU that live
    calls need. The HTTP and WebSocket protocols add a header deadline, a connection cap that covers
    WebSocket upgrades, and a bounded close (see :mod:`agent_voice_bridge.connection_limits`).
    """
    return uvicorn.Config(app, host=host, port=port, log_level="warning", loop="uvloop",
                          http=http_protocol(), ws=BoundedCloseWebSocket, ws_max_size=MAX_MESSAGE_BYTES,
                          ws_per_message_deflate=False, limit_concurrency=max_connections,
                          timeout_keep_alive=KEEP_ALIVE_SECONDS, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          lifespan="on", proxy_headers=False, **kwargs)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float):
        super().__init__(config)
        self._drain_seconds = drain_seconds
        self._draining: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self._app()
        if self._draining is not None or app is None or sig == signal.SIGINT and self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._draining = asyncio.get_event_loop().create_task(self._drain(app))

    def _app(self) -> FastAPI | None:
        app = self.config.loaded_app if self.config.loaded else None
        while app is not None and not isinstance(app, FastAPI):
            app = getattr(app, "app", None)
        return app

    async def _drain(self, app: FastAPI) -> None:
        calls = app.state.calls
        app.state.draining = True
        logger.info(f"shutting down: refusing new calls, {len(calls.live)} live call(s) may run "
                    f"{self._drain_seconds:g} s more")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_seconds
        while calls.live and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if calls.live:
            await calls.end_all("goodbye_restart", "server shutting down")
            while calls.live and loop.time() < deadline + 20:
                await asyncio.sleep(0.1)
        logger.info(f"shutdown: pid {os.getpid()} drained")
        self.should_exit = True


def serve(app: FastAPI | str, *, host: str, port: int, drain_seconds: float, workers: int = 1,
          tls: TlsConfig | None = None, max_connections: int | None = MAX_CONNECTIONS, ready: str | None = None) -> None:
    """One process, or ``workers`` processes sharing the port (``app`` must then be an import string).

    With ``tls`` (``server.tls``) uvicorn itself speaks https:// and wss:// with that certificate.
    ``max_connections`` is per process (``server.max_connections``). ``ready`` is printed (stderr) once
    every worker answers ``/healthz``.
    """
    if ready is not None:
        announce_when_ready(ready, local_url(host, port, tls is not None), workers)
    tls_files = {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key} if tls is not None else {}
    config = uvicorn_config(app, host, port, workers=workers, factory=isinstance(app, str),
                            max_connections=max_connections, **tls_files)
    if workers <= 1:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app's own handler reloads (never a kill)
        DrainingServer(config, drain_seconds).run()
        return
    _run_workers(config, drain_seconds, workers)


def local_url(host: str, port: int, tls: bool) -> str:
    """This machine's URL of a server listening on ``host``: a wildcard address is reached on loopback."""
    address = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"{'https' if tls else 'http'}://{address}:{port}"


def announce_when_ready(message: str, base: str, workers: int, timeout: float = 300.0) -> threading.Thread:
    """Print ``message`` once ``workers`` different processes have answered ``base``/healthz.

    Each probe is a fresh connection, which the kernel hands to whichever worker accepts first, so
    every worker is seen within a few probes once all are up; until then nothing claims the server is ready.
    """

    def probe() -> None:
        import httpx

        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < workers and time.monotonic() < deadline:
            try:
                # verify=False: our own server on this machine, asked only for its pid (its certificate may
                # name the public host, not 127.0.0.1).
                seen.add(httpx.get(f"{base}/healthz", timeout=2, verify=False).json()["pid"])
            except (httpx.HTTPError, ValueError, KeyError):
                time.sleep(0.1)
        if len(seen) >= workers:
            print(message, file=sys.stderr, flush=True)
        else:
            logger.warning(f"only {len(seen)} of {workers} workers answered {base}/healthz in {timeout:g} s")

    thread = threading.Thread(target=probe, name="ready-probe", daemon=True)
    thread.start()
    return thread


def _run_workers(config: uvicorn.Config, drain_seconds: float, workers: int) -> None:
    """``workers`` spawned processes on one bound socket, each a :class:`DrainingServer`.

    uvicorn's own supervisor builds a plain ``uvicorn.Server`` in every worker (and
    its API changed across versions), which would hang up live calls on SIGTERM.
    Here SIGTERM/SIGINT are passed on to every worker, so each drains its own calls, and SIGHUP
    too, so each reloads its configuration: no signal ends the supervisor and leaves its workers behind.
    """
    sock = config.bind_socket()
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=_worker, args=(config, drain_seconds, sock), name=f"voice-bridge-worker-{i}")
                 for i in range(workers)]

    def forward(sig: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for process in processes:
            process.start()
        logger.info(f"supervisor {os.getpid()}: workers {[p.pid for p in processes]}")
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def _worker(config: uvicorn.Config, drain_seconds: float, sock: socket.socket) -> None:
    from agent_voice_bridge.log_setup import configure

    configure(os.environ.get(LOG_LEVEL_ENV, "INFO"))  # a spawned process starts with loguru's defaults
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload asked before the app is up must not kill the worker
    DrainingServer(config, drain_seconds).run(sockets=[sock])
