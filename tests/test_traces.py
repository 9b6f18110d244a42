"""OTLP traces: each call a trace, each turn a span, its latency segments as child spans; nothing personal.

The collector is a real HTTP server decoding the OpenTelemetry protobuf with the official proto package;
the bridge exports with the OpenTelemetry SDK's OTLP/HTTP exporter, as it would to Jaeger or Tempo.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from agent_voice_bridge.observability.tracing import traces_endpoint
from agent_voice_bridge.pipelines.config import ObservabilityConfig
from agent_voice_bridge.transports.simulated_caller import Pause, Say, WaitHeard, WaitQuiet, run_call
from conftest import ECHO_YAML, ROOT, LiveServer, speech
from fakes.otlp import FakeCollector

CALLER, CALLEE = "+15557654321", "+15551230000"


def echo_yaml(**observability: object) -> str:
    doc = yaml.safe_load(ECHO_YAML)
    doc["observability"] = observability
    return yaml.safe_dump(doc)


async def call(server: LiveServer):
    return await run_call(server.http_url, [Pause(0.3), Say(speech("hello-world")), WaitHeard(timeout=5),
                                            WaitQuiet(idle=0.6)], from_number=CALLER, to_number=CALLEE)


async def test_each_call_is_one_trace_with_a_span_per_turn_and_its_segments_as_children() -> None:
    with FakeCollector() as collector:
        with LiveServer(echo_yaml(otlp_endpoint=collector.endpoint, service_name="bridge-under-test"),
                        "pipelines/echo.yaml") as server:
            results = [await call(server), await call(server)]
            server.wait_idle(2)
            collector.wait_for(roots=2)
    assert not collector.rejected
    traces = collector.traces()
    assert len(traces) == 2
    for result in results:
        trace, = [spans for spans in traces.values()
                  if any(s.name == "call" and s.attributes["call.sid"] == result.call_sid for s in spans)]
        root, = [s for s in trace if s.name == "call"]
        assert root.parent_id == "" and root.resource["service.name"] == "bridge-under-test"
        assert root.attributes["call.line"] == "default" and root.attributes["call.outcome"] == "caller_hung_up"
        assert root.attributes["call.replies"] >= 1
        turns = [s for s in trace if s.name.startswith("turn ")]
        assert turns and all(t.parent_id == root.span_id for t in turns)
        first = min(turns, key=lambda t: t.start_ns)
        segments = sorted(collector.children(first), key=lambda s: s.start_ns)
        assert [s.name for s in segments][-3:] == ["model", "bridge", "playout"], segments
        assert segments[0].name == "endpointing" and 450 <= segments[0].ms <= 560  # the VAD's stop_secs: 0.5
        for before, after in zip(segments, segments[1:]):  # back to back, inside their turn
            assert before.end_ns == after.start_ns
        assert first.start_ns == segments[0].start_ns and first.end_ns == segments[-1].end_ns
        assert abs(first.attributes["turn.total_ms"] - sum(s.ms for s in segments)) < 1
        assert root.start_ns <= first.start_ns and first.end_ns <= root.end_ns
    values = [str(v) for s in collector.spans for v in (*s.attributes.values(), *s.resource.values())]
    assert not any(CALLER[2:] in v or CALLEE[2:] in v for v in values), "phone numbers stay out by default"


async def test_phone_numbers_go_on_the_call_span_only_when_the_config_allows() -> None:
    with FakeCollector() as collector:
        with LiveServer(echo_yaml(otlp_endpoint=collector.endpoint, phone_numbers=True),
                        "pipelines/echo.yaml") as server:
            await call(server)
            server.wait_idle(1)
            collector.wait_for(roots=1)
    root, = [s for s in collector.spans if s.name == "call"]
    assert root.attributes["call.from"] == CALLER and root.attributes["call.to"] == CALLEE


def test_the_standard_variables_name_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert traces_endpoint(ObservabilityConfig()) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert traces_endpoint(ObservabilityConfig()) == "http://collector:4318/v1/traces"
    assert traces_endpoint(ObservabilityConfig(otlp_endpoint="https://tempo:4318/v1/traces")) == \
        "https://tempo:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://jaeger:4318/v1/traces")
    assert traces_endpoint(ObservabilityConfig()) == "http://jaeger:4318/v1/traces"


def test_with_no_endpoint_the_exporter_is_never_imported() -> None:
    code = ("import os, sys\n"
            "for name in ('OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'):\n"
            "    os.environ.pop(name, None)\n"
            "from agent_voice_bridge.pipelines.loader import load_text\n"
            "from agent_voice_bridge.pipelines.chain import build_chain\n"
            "from agent_voice_bridge.server import create_app\n"
            f"loaded = load_text({ECHO_YAML!r}, 'echo.yaml', {{}})\n"
            "create_app(loaded.config, build_chain(loaded), storage=None)\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.exporter')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}, cwd="/tmp")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
