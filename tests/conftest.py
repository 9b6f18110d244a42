"""Shared fixtures: real speech, a real uvicorn server on 127.0.0.1, and call helpers."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from loguru import logger

from agent_voice_bridge.configuration import load_setup
from agent_voice_bridge.lines import Lines, build_lines
from agent_voice_bridge.pipelines.chain import Chain, build_chain
from agent_voice_bridge.pipelines.loader import load_text
from agent_voice_bridge.security.limits import LimitStore, MemoryLimitStore
from agent_voice_bridge.server import create_app
from agent_voice_bridge.serving import DrainingServer, uvicorn_config
from agent_voice_bridge.storage import CallStore
from agent_voice_bridge.transports.simulated_caller import load_wav
from fakes import conformance

# Hypothesis keeps its example database and constants cache here, not in a .hypothesis/ of the working tree.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "voice-bridge-hypothesis"))

pytest_plugins = ["databases", "worktree_guard"]  # PostgreSQL/SQLite fixtures; fail a run that writes into the tree

logger.remove()
logger.configure(extra={"call_sid": "-"})
logger.add(sys.stderr, level="INFO", filter=lambda r: not r["name"].startswith("pipecat"))

SPEECH_DIR = Path(__file__).parent / "fixtures" / "speech"
ROOT = Path(__file__).resolve().parent.parent


def speech(name: str) -> np.ndarray:
    """A real human utterance as int16 at 8 kHz (file names are the transcripts)."""
    return load_wav(SPEECH_DIR / f"{name}.wav")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving the real app in a thread with its own event loop."""

    def __init__(self, yaml_text: str = "", path: str = "test.yaml", env: dict[str, str] | None = None,
                 store: LimitStore | None = None, drain_seconds: float = 5.0, port: int | None = None,
                 config_file: str | os.PathLike[str] | None = None):
        """``yaml_text`` (named ``path``), or ``config_file``: a file on disk, e.g. a server file with ``lines:``."""
        setup = None
        if config_file is not None:
            setup = load_setup(str(config_file))
            lines: Lines | Chain = build_lines(setup)
            self.chain: Chain = lines.first.chain
            loaded = setup.loaded
        else:
            loaded = load_text(yaml_text, path, env)
            lines = self.chain = build_chain(loaded)
        self.config = loaded.config
        self._tmp = tempfile.TemporaryDirectory(prefix="voice-bridge-test-")
        url = loaded.config.storage.url
        if "url" not in loaded.config.storage.model_fields_set:  # never the working directory's database
            url = f"sqlite:///{self._tmp.name}/calls.db"
        self.storage: CallStore | None = CallStore(url) if url else None
        self.app = create_app(loaded.config, lines, store or MemoryLimitStore(), self.storage,
                              setup=setup if config_file is not None else None)
        self.port = port or free_port()
        self.server = DrainingServer(uvicorn_config(self.app, "127.0.0.1", self.port), drain_seconds)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve())

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self._tmp.cleanup()

    def db(self, coroutine_function, *args):
        """Run a storage query on the server's loop (its engine lives there) and return the result."""
        assert self.loop is not None and self.storage is not None
        return asyncio.run_coroutine_threadsafe(coroutine_function(self.storage, *args), self.loop).result(10)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media-stream"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/incoming"

    @property
    def calls(self):
        return self.app.state.calls

    def call_tasks(self) -> list[str]:
        """Names of tasks still running on the server loop that belong to a call's pipeline."""
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(_task_names(), self.loop)
        return [n for n in future.result(5) if "::" in n or "call-" in n]

    def wait_idle(self, finished: int = 0, timeout: float = 10.0) -> None:
        """Wait until at least ``finished`` calls have ended and none is live (polling server state)."""
        deadline = time.monotonic() + timeout
        while self.calls.live or self.call_tasks() or self.calls.finished < finished:
            if time.monotonic() > deadline:
                raise AssertionError(f"calls still live: {list(self.calls.live)}, tasks: {self.call_tasks()}")
            time.sleep(0.05)


def run_cli(*argv: str) -> asyncio.Future[int]:
    """``voice-bridge …`` in a thread: it runs its own event loop, which a test's loop cannot host."""
    from agent_voice_bridge.cli import main

    return asyncio.to_thread(main, list(argv))


async def _task_names() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if not t.done()]


ECHO_YAML = (ROOT / "pipelines" / "echo.yaml").read_text()


CONFORMANCE_LINES = 20


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "invalid_client_messages: the test sends malformed client messages to a fake on purpose; "
        "their conformance violations are expected (server messages are still checked)")


def _fail_on_violations(found: list[conformance.Violation], when: str) -> None:
    if found:
        shown = "\n".join(f"  {v}" for v in found[:CONFORMANCE_LINES])
        more = f"\n  … and {len(found) - CONFORMANCE_LINES} more" if len(found) > CONFORMANCE_LINES else ""
        pytest.fail(f"{len(found)} protocol conformance violation(s) {when}:\n{shown}{more}", pytrace=False)


@pytest.fixture(autouse=True)
def protocol_conformance(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test if any fake sent or received a message the SDK's own models reject (fakes/conformance.py)."""
    _fail_on_violations(conformance.take_violations(), "recorded before this test (a fake in a wider-scoped fixture?)")
    yield
    found = conformance.take_violations()
    if request.node.get_closest_marker("invalid_client_messages"):
        found = [v for v in found if v.direction != "client"]
    _fail_on_violations(found, "in this test")


@pytest.fixture(scope="module")
def echo_server() -> Iterator[LiveServer]:
    with LiveServer(ECHO_YAML, "pipelines/echo.yaml") as server:
        yield server


async def seconds_to_close_a_stuck_socket(socket, close: Callable[[], Awaitable[object]]) -> float:
    """Time ``close()`` of a client ``socket`` whose peer has stopped reading.

    16 × 32 KB goes past the peer's ``max_queue`` (4 here), so the rest waits in the kernel's buffers
    and the close frame is never read: the close handshake lasts the client's whole close timeout.
    """
    for _ in range(16):
        await socket.send("x" * 32768)
    began = time.monotonic()
    await close()
    return time.monotonic() - began
