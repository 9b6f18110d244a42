"""Server subprocesses and what they cost: CPU time and resident memory of the whole process tree.

Uses psutil when it is installed, else reads ``/proc`` directly (Linux). A server is
always started in its own session (process group) and always ended in a ``finally``:
SIGTERM, then SIGKILL to that group if it has not gone within a few seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from agent_voice_bridge.cli import usable_cores

try:
    import psutil
except ImportError:  # pragma: no cover - exercised on machines without psutil
    psutil = None

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- process tree numbers


def _proc_children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            return [pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.Error:
            return []
    pids, todo = [], [pid]
    while todo and len(pids) < 10_000:
        p = todo.pop()
        pids.append(p)
        todo += _proc_children(p)
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds consumed so far by these processes (not their reaped children)."""
    total = 0.0
    for pid in pids:
        if psutil is not None:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        if psutil is not None:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
            continue
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the whole machine so far, all cores."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return (total - idle) / _TICK, total / _TICK


def wait_for_quiet(threshold_cores: float = 0.3, max_wait: float = 60.0, window: float = 1.0) -> float:
    """Wait (bounded) until the machine's busy CPU drops under ``threshold_cores``; return the last reading.

    The machine may be shared (builds, test suites): a point measured while something
    else burns a core would blame the server for it. The reading goes into the results.
    """
    deadline = time.monotonic() + max_wait
    cores = os.cpu_count() or 1
    while True:
        b0, t0 = machine_busy_seconds()
        time.sleep(window)
        b1, t1 = machine_busy_seconds()
        busy = (b1 - b0) / max(1e-9, t1 - t0) * cores
        if busy < threshold_cores or time.monotonic() > deadline:
            return round(busy, 3)


@dataclass
class Sample:
    t: float
    cpu_s: float
    rss: int


@dataclass
class TreeSampler:
    """Samples CPU and RSS of a process tree from a thread, every ``period`` seconds."""

    pid: int
    period: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> Sample:
        pids = tree_pids(self.pid)
        s = Sample(time.monotonic(), cpu_seconds(pids), rss_bytes(pids))
        self.samples.append(s)
        return s

    def start(self) -> None:
        def run() -> None:
            deadline = time.monotonic() + 3600
            while not self._stop.wait(self.period) and time.monotonic() < deadline:
                self.sample()

        self._thread = threading.Thread(target=run, daemon=True, name="tree-sampler")
        self._thread.start()

    def stop(self) -> Sample:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return self.sample()

    def peak_rss(self) -> int:
        return max((s.rss for s in self.samples), default=0)


# --------------------------------------------------------------------------- servers


@dataclass
class ServerSpec:
    """How to start one of the two servers under test."""

    name: str
    argv: list[str]
    ws_path: str = "/media-stream"

    @staticmethod
    def ours(config: str | Path, port: int, workers: int | None = None) -> ServerSpec:
        argv = [sys.executable, "-m", "agent_voice_bridge.cli", "serve", "-c", str(config),
                "--host", LOOPBACK, "--port", str(port), "--log-level", "warning"]
        if workers:
            argv += ["--workers", str(workers)]
        return ServerSpec("ours", argv)

    @staticmethod
    def pipecat(port: int, line: str = "echo") -> ServerSpec:
        return ServerSpec("pipecat", [sys.executable, "-m", "bench.reference_server", "--host", LOOPBACK,
                                      "--port", str(port), "--log-level", "warning", "--line", line])

    @property
    def workers(self) -> int:
        if "--workers" in self.argv:
            return int(self.argv[self.argv.index("--workers") + 1])
        return usable_cores() if self.name == "ours" else 1  # serve's default: one worker per core

    @property
    def port(self) -> int:
        return int(self.argv[self.argv.index("--port") + 1])

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}{self.ws_path}"


class ServerProcess:
    """A server subprocess in its own process group; use as a context manager."""

    def __init__(self, spec: ServerSpec, log_path: Path, start_timeout: float = 60.0):
        self.spec = spec
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        # The run's own directory, not the repo: a server writes its call records (voice-bridge.db) into its
        # working directory. PYTHONPATH keeps `-m bench.reference_server` importable from there.
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
        self.proc = subprocess.Popen(self.spec.argv, cwd=self.log_path.parent, stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _wait_ready(self) -> None:
        url = f"http://{LOOPBACK}:{self.spec.port}/healthz"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} server exited with {self.proc.returncode}; "
                                   f"see {self.log_path}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.spec.name} server did not answer {url} within {self.start_timeout:g} s")

    def log_tail(self, chars: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        if proc is not None:
            try:  # anything the server left behind in its own group (worker processes) goes too
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
