"""Load: N concurrent simulated callers against one server, measured from outside.

For one (server, N) point: start the server fresh (so memory is measured from a clean
baseline), place one warm-up call (imports, model load), start the caller processes
and wait until they are ready, take the baseline, let all N calls run on a common
schedule, then read what the calls measured and what the server's process tree spent.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

from bench.analysis import percentile
from bench.callers import caller_process, plan_calls, speech_clips
from bench.servers import ServerProcess, ServerSpec, TreeSampler, machine_busy_seconds, wait_for_quiet

LATENCY_LIMIT_MS = 60.0
COMPLETENESS_LIMIT = 0.99
GOAL_LATENCY_MS = 30.0
GOAL_COMPLETENESS = 0.99995
"""Issue 5's goal for a point: p99 added latency ≤ 30 ms and completeness 1.0 (to four decimals)."""
COLLAPSE_LATENCY_MS = 1000.0
"""A server whose p99 added latency passes this (or that drops calls or audio wholesale) has collapsed."""


def warm_up(url: str, workers: int = 1, rounds: int = 6) -> int:
    """Short calls until every worker process has had one, so first-call costs are not counted.

    Each worker loads its own Silero session and lazy imports on its first call (tens
    of ms of blocked event loop and ~10–25 MB): a measured call must not pay for that.
    Our ``/healthz`` answers with the worker's pid and its finished calls; calls are
    placed, a few at a time, until ``workers`` pids report one (bounded). Returns how
    many warm-up calls were placed.
    """
    from agent_voice_bridge.transports.simulated_caller import Pause, Say, run_call

    clip = speech_clips()[0][1]
    health = url.replace("ws://", "http://", 1).rsplit("/", 1)[0] + "/healthz"

    async def calls_at_once(n: int) -> None:
        await asyncio.gather(*(run_call(url, [Pause(0.2), Say(clip[:8000])], tail=0.3) for _ in range(n)))

    placed = 0
    for _ in range(rounds):
        n = 2 * workers + 2
        asyncio.run(asyncio.wait_for(calls_at_once(n), 30))
        placed += n
        warmed = _warm_pids(health, tries=8 * workers)
        if warmed is None or len(warmed) >= workers:
            break
    return placed


def _warm_pids(url: str, tries: int) -> set[int] | None:
    """Pids of worker processes whose /healthz reports a finished call (None: no pid reported)."""
    import json
    import urllib.request

    warmed: set[int] = set()
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                body = json.loads(response.read())
        except (OSError, ValueError):
            continue
        if "pid" not in body:
            return None
        if body.get("finished_calls", 0) > 0:
            warmed.add(int(body["pid"]))
    return warmed


def caller_processes_for(n: int, per_process: int) -> int:
    return max(1, min(8, math.ceil(n / per_process)))


def run_point(spec: ServerSpec, n: int, seconds: float, *, ramp: float, log_dir: Path,
              calls_per_process: int = 25, settle: float = 1.0, quiet_wait: float = 60.0) -> dict[str, Any]:
    """Run ``n`` calls of about ``seconds`` each against a fresh ``spec`` server; return the numbers."""
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    log = log_dir / f"{spec.name}-{n}.log"
    background = wait_for_quiet(max_wait=quiet_wait)
    with ServerProcess(spec, log) as server:
        warm_up(spec.ws_url, spec.workers)
        k = caller_processes_for(n, calls_per_process)
        plans = plan_calls(n, seconds, ramp)
        ready, out, go, t0 = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
        budget = seconds + ramp + 60.0
        try:
            for i in range(k):
                share = plans[i::k]
                procs.append(ctx.Process(target=caller_process, name=f"caller-{i}",
                                         args=(spec.ws_url, share, ready, go, t0, out, budget), daemon=True))
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=120)
            time.sleep(settle)  # let the warm-up call's teardown finish before the baseline
            sampler = TreeSampler(server.pid)
            base = sampler.sample()
            busy0, total0 = machine_busy_seconds()
            t0.value = time.time() + 0.3
            go.set()
            sampler.start()
            reports = []
            deadline = time.monotonic() + budget + 30
            while len(reports) < k and time.monotonic() < deadline:
                try:
                    reports.append(out.get(timeout=max(0.1, deadline - time.monotonic())))
                except Exception:
                    break
            end = sampler.stop()
            busy1, total1 = machine_busy_seconds()
            wall = end.t - base.t
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.terminate()
                    p.join(5)
        server_log = server.log_tail(2000)
    point = summarise(spec.name, n, seconds, reports, k, base.cpu_s, end.cpu_s, base.rss, sampler.peak_rss(),
                      wall, (busy1 - busy0) / max(1e-9, total1 - total0), server_log)
    point["background_cores_before"] = background
    return point


def summarise(name: str, n: int, seconds: float, reports: list[dict], processes: int, cpu0: float, cpu1: float,
              rss0: int, rss_peak: int, wall: float, machine_busy: float, server_log: str) -> dict[str, Any]:
    calls = [r for rep in reports for r in rep.get("results", [])]
    harness_errors = [rep["error"] for rep in reports if "error" in rep]
    ok = [c for c in calls if not c.get("failed")]
    failed = [c["failed"] for c in calls if c.get("failed")]
    missing = n - len(calls)
    latencies = [x for c in ok for x in c["latencies_ms"]]
    call_seconds = sum(c["sent_s"] for c in ok)
    sent = sum(c["sent_s"] for c in ok)
    received = sum(c["received_s"] for c in ok)
    worst_gaps = [c["worst_gap_ms"] for c in ok]
    caller_cpu = sum(rep.get("cpu_s", 0.0) for rep in reports)
    unmatched = sum(c["unmatched_utterances"] for c in ok)
    utterances = sum(c["utterances"] for c in ok)
    call_errors = [e for c in ok for e in c["errors"]]
    errors = len(failed) + missing + len([c for c in ok if c["errors"]]) + len(harness_errors)
    completeness = received / sent if sent else 0.0
    p99 = percentile(latencies, 99)
    point = {
        "server": name,
        "calls": n,
        "seconds_per_call": seconds,
        "caller_processes": processes,
        "completed_calls": len(ok),
        "call_seconds": round(call_seconds, 2),
        "wall_s": round(wall, 2),
        "cpu_ms_per_call_s": round((cpu1 - cpu0) * 1000.0 / call_seconds, 3) if call_seconds else None,
        "server_cpu_cores": round((cpu1 - cpu0) / wall, 3) if wall > 0 else None,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": p99,
        "latency_max_ms": max(latencies, default=None),
        "utterances": utterances,
        "unmatched_utterances": unmatched,
        "worst_gap_p99_ms": percentile(worst_gaps, 99),
        "worst_gap_max_ms": max(worst_gaps, default=None),
        "completeness": round(completeness, 5),
        "completeness_min": round(min((c["completeness"] for c in ok), default=0.0), 5),
        "rss_baseline_mb": round(rss0 / 2**20, 1),
        "rss_peak_mb": round(rss_peak / 2**20, 1),
        "rss_per_call_mb": round((rss_peak - rss0) / 2**20 / n, 3) if n else None,
        "caller_cpu_ms_per_call_s": round(caller_cpu * 1000.0 / call_seconds, 3) if call_seconds else None,
        "caller_loop_lag_p99_ms": max((rep.get("loop_lag_p99_ms") or 0.0 for rep in reports), default=None),
        "caller_late_start_max_s": round(max((c.get("late_start_s", 0.0) for c in ok), default=0.0), 3),
        "machine_cpu_busy": round(machine_busy, 3),
        # busy cores not accounted for by the server or the callers: other load on a shared machine
        "other_cpu_cores": round(machine_busy * (os.cpu_count() or 1) - (cpu1 - cpu0) / wall - caller_cpu / wall, 3)
        if wall > 0 else None,
        "errors": errors,
        "error_examples": (failed + call_errors + harness_errors)[:5],
    }
    point["passes"] = bool(p99 is not None and p99 <= LATENCY_LIMIT_MS and completeness >= COMPLETENESS_LIMIT
                           and errors == 0 and unmatched == 0)
    point["meets_goal"] = bool(point["passes"] and p99 <= GOAL_LATENCY_MS and completeness >= GOAL_COMPLETENESS)
    point["collapsed"] = bool(
        p99 is None or p99 > COLLAPSE_LATENCY_MS or completeness < 0.9 or errors > max(1, n // 10)
        or unmatched > max(1, utterances // 10))
    # Per call, compact: how latency evolved utterance by utterance (it can only ratchet up on a
    # Twilio-like player: audio that arrives after its turn to play is played later, not dropped).
    point["per_call"] = [{"i": c["index"], "lat_ms": [round(x) for x in c["latencies_ms"]],
                          "unmatched": c["unmatched_utterances"], "gaps": len(c["gaps_ms"]),
                          "worst_gap_ms": c["worst_gap_ms"], "complete": round(c["completeness"], 4)}
                         for c in sorted(ok, key=lambda c: c["index"])]
    if errors and server_log:
        point["server_log_tail"] = server_log[-1000:]
    return point
