"""Each call as an OpenTelemetry trace: a ``call`` span, a span per turn, its segments as child spans.

Exported with the OpenTelemetry SDK over OTLP/HTTP (protobuf) to ``observability.otlp_endpoint`` or the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the SDK also reads
``OTEL_EXPORTER_OTLP_HEADERS`` for a vendor's API key), so Jaeger, Tempo, Honeycomb or Grafana show them.

The spans are written when the call ends, from its turn timeline (observability/timeline.py), with the
times the moments happened: nothing runs per frame, and with no endpoint nothing here imports the SDK.
The bridge keeps its own tracer provider rather than setting the process-wide one, so pipecat's own
tracing (whose spans carry the model's prompts, and so the caller's number) stays off.

Attributes are identifiers and figures: the call's SID, line, direction, outcome and counts, each turn's
segments in milliseconds. Phone numbers only with ``observability.phone_numbers: true``.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from agent_voice_bridge.pipelines.config import ObservabilityConfig
    from agent_voice_bridge.transports.call_info import CallInfo

TRACES_PATH = "/v1/traces"


def traces_endpoint(config: ObservabilityConfig) -> str | None:
    """Where traces go: the config's endpoint, else the standard variables; None: no traces."""
    specific = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not config.otlp_endpoint and specific:
        return specific  # the standard's signal-specific URL is used as given
    base = config.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def call_tracer(config: ObservabilityConfig) -> CallTracer | None:
    """A tracer for the server's calls, or None when no endpoint is set (then the SDK is never imported)."""
    endpoint = traces_endpoint(config)
    if endpoint is None:
        return None
    try:
        return CallTracer(endpoint, config.service_name, phone_numbers=config.phone_numbers)
    except ImportError as exc:  # calls go on without traces rather than not at all
        logger.error(f"traces to {endpoint} are off: the OpenTelemetry SDK is not installed ({exc.name}); "
                     "pip install 'agent-voice-bridge[otel]'")
        return None


class CallTracer:
    """Turns a finished call's timeline into spans and hands them to a batching OTLP exporter."""

    def __init__(self, endpoint: str, service_name: str, *, phone_numbers: bool = False):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.endpoint = endpoint
        self._phone_numbers = phone_numbers
        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint),
                                                             schedule_delay_millis=1000))
        self._tracer = self._provider.get_tracer("agent_voice_bridge")

    def export_call(self, info: CallInfo, outcome: str) -> None:
        """Queue the call's spans (the exporter sends them from its own thread)."""
        from opentelemetry import trace

        offset = time.time_ns() - time.monotonic_ns()

        def ns(monotonic: float) -> int:
            return int(monotonic * 1e9) + offset

        timeline = info.timeline
        root = self._tracer.start_span("call", start_time=ns(timeline.started),
                                       attributes=self._call_attributes(info, outcome))
        in_call = trace.set_span_in_context(root)
        for turn in timeline.turns():
            segments = turn.segments()
            if not segments:
                continue
            attributes: dict[str, Any] = {"turn.number": turn.number, "turn.barge_in": bool(turn.barge)}
            if turn.total_ms is not None:
                attributes["turn.total_ms"] = round(turn.total_ms, 1)
            span = self._tracer.start_span(f"turn {turn.number}", context=in_call, attributes=attributes,
                                           start_time=ns(min(s.start for s in segments)))
            in_turn = trace.set_span_in_context(span)
            for segment in segments:
                child = self._tracer.start_span(segment.name, context=in_turn, start_time=ns(segment.start),
                                                attributes={"segment.ms": round(segment.ms, 1)})
                child.end(end_time=ns(segment.end))
            span.end(end_time=ns(max(s.end for s in segments)))
        root.end(end_time=ns(time.monotonic()))

    def _call_attributes(self, info: CallInfo, outcome: str) -> dict[str, Any]:
        stats = info.stats
        attributes: dict[str, Any] = {
            "call.sid": info.call_sid, "call.line": info.line, "call.direction": info.direction,
            "call.outcome": outcome, "call.replies": stats.replies, "call.barge_ins": stats.barge_ins,
        }
        if self._phone_numbers:
            attributes["call.from"] = info.caller
            attributes["call.to"] = info.callee
        return attributes

    def shutdown(self) -> None:
        """Send what is queued and stop (blocking: run it in a thread)."""
        self._provider.shutdown()
