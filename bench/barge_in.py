"""Barge-in: how soon after the caller starts talking over the echo does ``clear`` arrive.

Against our echo line (``pipelines/echo.yaml``, ``vad.interrupter`` with
``start_secs: 0.15``) in a server subprocess. Each call repeats ``rounds`` times: say a
long utterance, wait until its echo has played for a while (0.2–0.8 s, varied), talk
over it, wait for quiet. Latency is ``clear`` time minus the caller's speech onset
(first 20 ms frame above -40 dBFS), both on the caller clock (20 ms resolution).
Stale audio is any media that arrives within 100 ms after a ``clear`` (it belonged to
the interrupted turn); a round without a ``clear`` is a missed barge-in.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from bench.analysis import percentile
from bench.callers import speech_clips
from bench.servers import ServerProcess, ServerSpec, free_port

ROOT = Path(__file__).resolve().parent.parent
ECHO_YAML = ROOT / "pipelines" / "echo.yaml"


def _start_secs(path: Path) -> float | None:
    """Speech needed before a barge-in: over the agent, the larger of ``start_secs`` and ``backchannel_secs``."""
    from agent_voice_bridge.pipelines.loader import load_file
    from agent_voice_bridge.processors.vad_interrupter import VADInterrupterParams

    for entry in load_file(path, env={}).config.pipeline:
        if isinstance(entry, dict) and "vad.interrupter" in entry or entry == "vad.interrupter":
            options = (entry.get("vad.interrupter") if isinstance(entry, dict) else None) or {}
            params = VADInterrupterParams(**options)
            return max(params.start_secs, params.backchannel_secs)
    return None


async def _calls(url: str, calls: int, rounds: int) -> list[Any]:
    from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard, WaitQuiet, run_call

    clips = dict(speech_clips())
    long, interrupt = clips["all-circuits-busy-now"], clips["vm-goodbye"]

    def script(c: int) -> list[Any]:
        steps: list[Any] = [Pause(0.4)]
        for r in range(rounds):
            after = 0.2 + 0.6 * ((c * rounds + r) * 0.618 % 1.0)  # spread over 0.2–0.8 s, deterministic
            steps += [Say(long, "long"), WaitHeard(after=after, timeout=5.0), Say(interrupt, "barge-in"),
                      WaitQuiet(idle=0.8, timeout=8.0)]
        return steps

    async def one(c: int) -> Any:
        await asyncio.sleep(0.15 * c)
        try:
            return await run_call(url, script(c), tail=0.3, connect_timeout=10.0)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    budget = 10.0 + rounds * 20.0 + calls
    return await asyncio.wait_for(asyncio.gather(*(one(c) for c in range(calls))), budget)


def run_barge_in(calls: int = 5, rounds: int = 4, log_dir: Path | None = None) -> dict[str, Any]:
    spec = ServerSpec.ours(ECHO_YAML, free_port())
    log = (log_dir or ROOT / "bench" / "results") / "barge-in-server.log"
    with ServerProcess(spec, log):
        results = asyncio.run(_calls(spec.ws_url, calls, rounds))
    latencies: list[float] = []
    stale = 0
    missed = 0
    extra = 0
    failed = [r for r in results if isinstance(r, str)]
    for r in results:
        if isinstance(r, str):
            continue
        # Utterances alternate long / barge-in; a clear belongs to the barge-in utterance it follows.
        barge_onsets = [on for i, (on, _) in enumerate(r.utterances) if i % 2 == 1]
        lat = [x for x in r.clear_latencies() if not math.isnan(x)]
        latencies += [x * 1000.0 for x in lat]
        missed += max(0, len(barge_onsets) - len(r.clears))
        extra += max(0, len(r.clears) - len(barge_onsets))
        stale += r.stale_media_after_clear
    start_secs = _start_secs(ECHO_YAML)
    p95 = percentile(latencies, 95)
    return {
        "chain": str(ECHO_YAML.relative_to(ROOT)),
        "start_secs": start_secs,
        "calls": calls,
        "rounds_per_call": rounds,
        "barge_ins": calls * rounds,
        "clears": len(latencies),
        "missed": missed,
        "extra_clears": extra,
        "clear_p50_ms": percentile(latencies, 50),
        "clear_p95_ms": p95,
        "clear_max_ms": max(latencies, default=None),
        "goal_ms": None if start_secs is None else round(start_secs * 1000 + 40, 1),
        "stale_bytes_after_clear": stale,
        "failed_calls": failed[:3],
    }
