"""The Grafana dashboard in deploy/ asks only for series the server's /metrics has."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, LiveServer

DASHBOARD = ROOT / "deploy" / "grafana" / "voice-bridge-dashboard.json"
SERIES_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count",
                                                                                    "_created")}


def queries(node: Any) -> Iterator[str]:
    """Every PromQL text in the dashboard: panel targets' ``expr`` and the variables' queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def test_every_metric_the_dashboard_uses_is_served(echo_server: LiveServer) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for q in queries(dashboard) for name in re.findall(r"\bvoice_bridge_\w+", q)}
    exposition = httpx.get(f"http://127.0.0.1:{echo_server.port}/metrics").text
    served = {family.name + suffix for family in text_string_to_metric_families(exposition)
              for suffix in SERIES_SUFFIXES.get(family.type, ("",))}
    assert used, "the dashboard queries no voice_bridge metric"
    assert used <= served, f"not in /metrics: {sorted(used - served)}"
    assert "voice_bridge_turn_segment_seconds_bucket" in used
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("live calls", "outcome", "refused", "barge-ins", "turn segments p50", "turn segments p95",
                  "backend errors", "config reloads"):
        assert topic in titles, topic
