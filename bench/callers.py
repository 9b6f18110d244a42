"""Simulated callers, run in their own processes so they never share the server's interpreter.

Each caller process places its share of the calls with
:func:`agent_voice_bridge.transports.simulated_caller.run_call`: real human speech
(the Asterisk prompts in ``tests/fixtures/speech``) in real time, 20 ms μ-law frames,
with pauses between utterances, then hang-up. All calls of a run start on one
wall-clock schedule (a ramp of ``ramp`` seconds), so the server sees calls arrive
spread out, as a phone line would, not in one burst.

The process also measures itself: CPU time spent (the machine has 2 cores, so every
caller millisecond is one the server did not get) and how late its event loop wakes
up (a late caller sends late frames and would blame the server for its own delay).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
SPEECH_DIR = ROOT / "tests" / "fixtures" / "speech"
LAG_PROBE_SECONDS = 0.01
LINGER_SECONDS = 0.5
"""Before hanging up, wait this long at most for the echo of the last frames (see ``run_call``)."""


@dataclass
class CallPlan:
    """One call: when it starts (seconds after the run's t0), how long it talks, its random seed."""

    index: int
    start_offset: float
    seconds: float
    seed: int


def speech_clips() -> list[tuple[str, Any]]:
    from agent_voice_bridge.transports.simulated_caller import load_wav

    return [(p.stem, load_wav(p)) for p in sorted(SPEECH_DIR.glob("*.wav"))]


def conversation(seconds: float, seed: int, clips: list[tuple[str, Any]]) -> list[Any]:
    """Utterances separated by 0.2–0.6 s pauses, until about ``seconds`` of audio; no clip twice in a row."""
    from agent_voice_bridge.transports.simulated_caller import Pause, Say

    rng = random.Random(seed)
    steps: list[Any] = []
    total = 0.0
    last = -1
    while total < seconds:
        pause = rng.uniform(0.2, 0.6)
        pick = rng.randrange(len(clips) - 1) if last >= 0 and len(clips) > 1 else rng.randrange(len(clips))
        last = pick + (pick >= last) if last >= 0 and len(clips) > 1 else pick  # never the same clip twice in a row
        name, audio = clips[last]
        steps += [Pause(pause), Say(audio, name)]
        total += pause + len(audio) / 8000
    return steps


def plan_calls(n: int, seconds: float, ramp: float, seed: int = 1) -> list[CallPlan]:
    """``n`` calls whose starts are spread evenly over ``ramp`` seconds."""
    return [CallPlan(i, ramp * i / n if n > 1 else 0.0, seconds, seed * 100003 + i) for i in range(n)]


async def _place_calls(url: str, plans: list[CallPlan], t0: float, budget: float) -> tuple[list[Any], list[float]]:
    """Run the calls; returns per call a ``CallResult`` or a failure dict, and the loop-lag probes."""
    from agent_voice_bridge.transports.simulated_caller import run_call

    clips = speech_clips()
    lags: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set() and len(lags) < 200_000:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            lags.append((loop.time() - before - LAG_PROBE_SECONDS) * 1000.0)

    async def one(plan: CallPlan) -> Any:
        steps = conversation(plan.seconds, plan.seed, clips)
        await asyncio.sleep(max(0.0, t0 + plan.start_offset - time.time()))
        late = time.time() - (t0 + plan.start_offset)
        try:
            return await run_call(url, steps, tail=0.5, connect_timeout=10.0, linger=LINGER_SECONDS), late
        except Exception as exc:  # a refused or broken call is a result, not a crash of the harness
            return {"index": plan.index, "failed": f"{type(exc).__name__}: {exc}"[:200], "late_start_s": late}

    prober = asyncio.create_task(probe())
    tasks = [asyncio.create_task(one(p)) for p in plans]
    try:
        finished, pending = await asyncio.wait(tasks, timeout=budget)
        for task in pending:
            task.cancel()
        results: list[Any] = []
        for plan, task in zip(plans, tasks):
            if task in finished and task.exception() is None:
                results.append(task.result())
            else:
                why = "timed out" if task in pending else f"{type(task.exception()).__name__}: {task.exception()}"
                results.append({"index": plan.index, "failed": why[:200]})
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        done.set()
        await asyncio.gather(prober, return_exceptions=True)
    return results, lags


def _metrics(plans: list[CallPlan], results: list[Any]) -> list[dict]:
    from bench.analysis import call_metrics

    out = []
    for plan, r in zip(plans, results):
        if isinstance(r, dict):
            out.append(r)
            continue
        result, late = r
        metrics = call_metrics(result)
        metrics.update(index=plan.index, failed=None, late_start_s=late)
        out.append(metrics)
    return out


def caller_process(url: str, plans: list[CallPlan], ready: Any, go: Any, t0: Any, out: Any, budget: float) -> None:
    """Process entry point: get ready, wait for ``go``, place the calls, report through ``out``."""
    try:
        import numpy as np

        import bench.analysis  # noqa: F401  (import everything before the clock starts)
        import agent_voice_bridge.transports.simulated_caller  # noqa: F401

        speech_clips()
        ready.put(mp.current_process().name)
        if not go.wait(120):
            out.put({"error": "never told to start"})
            return
        cpu0 = time.process_time()
        # uvloop, as the server uses: every caller millisecond is one the server on this machine does not get.
        results, lags = uvloop.run(_place_calls(url, plans, t0.value, budget))
        cpu = time.process_time() - cpu0  # the calls only: the analysis below is not caller load
        results = _metrics(plans, results)
        lag_p99 = float(np.percentile(lags, 99)) if lags else None
        lag_max = float(max(lags)) if lags else None
        out.put({"results": results, "cpu_s": cpu, "loop_lag_p99_ms": lag_p99, "loop_lag_max_ms": lag_max})
    except BaseException as exc:  # report, never hang the parent
        out.put({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]})
