"""Call setup: how long building one call's pipeline takes, ours from YAML vs pipecat's reference.

Ours: ``load_text`` + ``build_chain`` once (what ``serve`` does at start), then
``build_pipeline(chain, CallInfo(...))`` per call, as the server does when a stream
starts. The very first build is reported on its own: it loads the shared Silero
session for the process. pipecat's: ``bench.reference_server.build_reference`` per
call (serializer, transport, ``SileroVADAnalyzer`` with its own ONNX session, worker).
Nothing is started; this is the time the event loop is blocked before a call can run.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.analysis import percentile

ROOT = Path(__file__).resolve().parent.parent
CHAINS = {"echo.yaml": ROOT / "pipelines" / "echo.yaml",
          "loopback-vad.yaml": ROOT / "bench" / "pipelines" / "loopback-vad.yaml"}


def _ms(values: list[float]) -> dict[str, float | None]:
    return {"p50_ms": _round(percentile(values, 50)), "p99_ms": _round(percentile(values, 99)),
            "max_ms": _round(max(values, default=None))}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def ours(path: Path, builds: int) -> dict[str, Any]:
    from agent_voice_bridge.pipelines.builder import build_pipeline
    from agent_voice_bridge.pipelines.chain import build_chain
    from agent_voice_bridge.pipelines.loader import load_text
    from agent_voice_bridge.transports.call_info import CallInfo

    text = path.read_text()
    t = time.perf_counter()
    chain = build_chain(load_text(text, str(path), env={}))
    chain_ms = (time.perf_counter() - t) * 1000.0

    def one(i: int) -> float:
        info = CallInfo(call_sid=f"CA{i:032x}", stream_sid=f"MZ{i:032x}", stream=SimpleNamespace())  # type: ignore[arg-type]
        t = time.perf_counter()
        build_pipeline(chain, info)
        return (time.perf_counter() - t) * 1000.0

    first = one(0)
    times = [one(i) for i in range(1, builds + 1)]
    return {"chain_ms": round(chain_ms, 3), "first_build_ms": round(first, 3), "builds": builds, **_ms(times)}


def pipecat(builds: int) -> dict[str, Any]:
    from bench.reference_server import build_reference

    def one(i: int) -> float:
        t = time.perf_counter()
        build_reference(SimpleNamespace(headers={}), f"MZ{i:032x}", f"CA{i:032x}")
        return (time.perf_counter() - t) * 1000.0

    first = one(0)
    times = [one(i) for i in range(1, builds + 1)]
    return {"first_build_ms": round(first, 3), "builds": builds, **_ms(times)}


def run_setup(builds: int = 200, pipecat_builds: int = 30) -> dict[str, Any]:
    result: dict[str, Any] = {name: ours(path, builds) for name, path in CHAINS.items()}
    result["pipecat"] = pipecat(pipecat_builds)
    return result
