"""A fake OpenTelemetry collector: OTLP/HTTP traces (``POST /v1/traces``, protobuf), decoded with the official
``opentelemetry-proto`` messages, as Jaeger, Tempo or an OpenTelemetry Collector would receive them.

It answers as the OTLP specification says a server does: ``200`` with an ``ExportTraceServiceResponse`` body of
the request's content type for a request it decoded, ``400`` for one it could not, ``415`` for an unsupported
content type (only ``application/x-protobuf`` here), ``404`` elsewhere.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

PROTOBUF = "application/x-protobuf"


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class FakeCollector:
    """``with FakeCollector() as collector:``; ``collector.endpoint`` is its base URL (``…/v1/traces`` is appended
    by exporters configured with a base)."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    rejected: list[str] = field(default_factory=list)
    _arrived: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def __enter__(self) -> FakeCollector:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    return self._answer(404, b"")
                if self.headers.get("Content-Type") != PROTOBUF:
                    collector.rejected.append(f"content type {self.headers.get('Content-Type')}")
                    return self._answer(415, b"")
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                try:
                    request.ParseFromString(body)
                except DecodeError as exc:
                    collector.rejected.append(f"not an ExportTraceServiceRequest: {exc}")
                    return self._answer(400, b"")
                collector.take(request)
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", PROTOBUF)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def take(self, request: ExportTraceServiceRequest) -> None:
        with self._arrived:
            self._take(request)
            self._arrived.notify_all()

    def _take(self, request: ExportTraceServiceRequest) -> None:
        self.requests += 1
        for resource_spans in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(ReceivedSpan(
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex(),
                        name=span.name, start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                        attributes={a.key: value_of(a.value) for a in span.attributes}, resource=resource))

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        out: dict[str, list[ReceivedSpan]] = {}
        for span in self.spans:
            out.setdefault(span.trace_id, []).append(span)
        return out

    def wait_for(self, roots: int, timeout: float = 10.0) -> None:
        """Until ``roots`` call spans have arrived."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: sum(s.name == "call" for s in self.spans) >= roots, timeout):
                raise AssertionError(f"{roots} call traces expected, got spans {[s.name for s in self.spans]}")

    def children(self, parent: ReceivedSpan) -> Iterator[ReceivedSpan]:
        return (s for s in self.spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id)
