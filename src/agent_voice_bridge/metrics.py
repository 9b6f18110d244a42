"""Prometheus metrics for ``GET /metrics``.

With ``serve --workers N`` each worker process writes its samples to a shared
directory (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before the workers
start) and ``/metrics`` aggregates all of them, so whichever worker answers the
scrape reports the whole server.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Every per-call series is labelled by the call's line (its name in the server file; "default" for a server run
# from one pipeline file), so a dashboard can tell the sales line's latencies from the support line's.

LIVE_CALLS = Gauge("voice_bridge_live_calls", "Calls with a running pipeline, by line.", ["line"],
                   multiprocess_mode="livesum")
CALLS = Counter("voice_bridge_calls", "Finished calls by outcome and line.", ["outcome", "line"])
CONFIG_RELOADS = Counter("voice_bridge_config_reloads", "Configuration reloads (file change or SIGHUP) by result: "
                         "ok (swapped in), failed (refused, the last good one serves), unchanged.", ["result"])
REFUSED = Counter("voice_bridge_refused_calls", "Webhooks and streams refused, by reason.", ["reason"])
BARGE_INS = Counter("voice_bridge_barge_ins", "Times the caller talked over the AI and the line was cleared, by "
                    "line.", ["line"])
BACKEND_ERRORS = Counter("voice_bridge_backend_errors", "AI backends lost mid-call or refused at its start, by line.",
                         ["line"])
FIRST_REPLY = Histogram("voice_bridge_first_reply_seconds", "Caller stops talking → first AI audio sent, by line.",
                        ["line"], buckets=(0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0))
BARGE_IN_LATENCY = Histogram("voice_bridge_barge_in_seconds", "Caller starts talking over the AI → clear sent, by "
                             "line.", ["line"], buckets=(0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0))
TURN_SEGMENT = Histogram(
    "voice_bridge_turn_segment_seconds",
    "Per turn, the time each segment took (observability/timeline.py): endpointing, stt, request, llm, model, "
    "tts, bridge, playout; a barge-in's barge_detect, barge_clear, barge_confirm.", ["segment", "line"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0))


def exposition() -> tuple[bytes, str]:
    """The metrics text: this process's, or every worker's when running multi-process."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
