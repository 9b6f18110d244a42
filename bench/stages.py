"""Where our server's time goes, measured from outside: the same load on a ladder of chains.

Each step adds stages to the previous one; the difference in CPU per call-second
between two steps is what the added stages cost, pipecat's per-processor frame
handling (queues, tasks) included, which a profiler attributes elsewhere.

1. ``bare``: twilio.input → loopback → twilio.output (transport, JSON, base64, WebSocket)
2. ``codec``: + mulaw.decode / mulaw.encode
3. ``resample``: + resample 16 kHz / resample 8 kHz
4. ``loopback-vad``: + vad.interrupter (Silero) — the load benchmark's chain

Then a what-if (``bench/variants.py``; measurement only, the bridge does not use it),
compared with step 4:

5. ``whatif-pipecat-vad``: step 4 with pipecat's own ``VADProcessor(SileroVADAnalyzer())``
   in place of ``vad.interrupter``: what our VAD stage (one batched model per process,
   per-window volume, no per-frame hops) saves against the stock one
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.load import run_point
from bench.servers import ServerSpec, free_port

ROOT = Path(__file__).resolve().parent.parent
LADDER = [("bare", "transport only"), ("codec", "+ μ-law decode/encode"),
          ("resample", "+ resample 16k/8k"), ("loopback-vad", "+ vad.interrupter"),
          ("whatif-pipecat-vad", "what-if: pipecat's VADProcessor instead")]
COMPARED_WITH = {"whatif-pipecat-vad": "resample"}
"""A what-if's added cost is measured against this step, not the one before it."""


def run_stages(calls: int, seconds: float, *, ramp: float, log_dir: Path, workers: int | None = None,
               calls_per_process: int = 25, quiet_wait: float = 60.0) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    previous: float | None = None
    cpu_of: dict[str, float | None] = {}
    for name, what in LADDER:
        spec = ServerSpec.ours(ROOT / "bench" / "pipelines" / f"{name}.yaml", free_port(), workers)
        spec.name = f"ours-{name}"
        point = run_point(spec, calls, seconds, ramp=ramp, log_dir=log_dir, calls_per_process=calls_per_process,
                          quiet_wait=quiet_wait)
        cpu = point.get("cpu_ms_per_call_s")
        cpu_of[name] = cpu
        if name in COMPARED_WITH:
            previous = cpu_of.get(COMPARED_WITH[name])
        steps.append({"chain": name, "adds": what, "cpu_ms_per_call_s": cpu,
                      "added_ms_per_call_s": None if cpu is None or previous is None else round(cpu - previous, 3),
                      "latency_p50_ms": point.get("latency_p50_ms"), "latency_p99_ms": point.get("latency_p99_ms"),
                      "rss_per_call_mb": point.get("rss_per_call_mb"), "errors": point.get("errors")})
        previous = cpu if cpu is not None else previous
    return {"calls": calls, "seconds_per_call": seconds, "steps": steps}
