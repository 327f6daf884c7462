"""A real OTLP/HTTP trace receiver for tests: an HTTP server on 127.0.0.1 (a free port)
that decodes ``ExportTraceServiceRequest`` protobufs POSTed to /v1/traces and keeps the
spans, flattened, for assertions.

    with OtlpReceiver() as receiver:              # or the ``otlp_receiver`` fixture (conftest)
        provider = configure_tracing(receiver.endpoint, set_global=False)
        ...
        spans = receiver.wait_for(lambda spans: len(spans) >= 2)

``delay`` makes it a slow collector (each request sleeps that long before answering).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = ["OtlpReceiver", "ReceivedSpan"]

STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    pairs: list[KeyValue] = list(items)
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class ReceivedEvent:
    name: str
    attributes: dict[str, Any]
    time_unix_nano: int


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived over the wire (ids in lowercase hex, "" for no parent)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: tuple[ReceivedEvent, ...]
    status_code: int
    status_message: str
    start_unix_nano: int
    end_unix_nano: int
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""

    def event_names(self) -> list[str]:
        return [event.name for event in self.events]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        if receiver.delay:
            time.sleep(receiver.delay)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:
            self.send_error(400, "not an ExportTraceServiceRequest")
            return
        receiver._add(request, self.headers.get("Content-Type", ""), dict(self.headers))
        payload = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OtlpReceiver


class OtlpReceiver:
    """Collects spans from OTLP/HTTP exports; ``close()`` (or leaving ``with``) stops it."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests = 0
        self.content_types: list[str] = []
        self.headers: list[dict[str, str]] = []  # each export request's HTTP headers
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self.port: int = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"otlp-receiver-{self.port}", daemon=True,
        )
        self._thread.start()

    def _add(self, request: ExportTraceServiceRequest, content_type: str,
             headers: dict[str, str] | None = None) -> None:
        spans: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        events=tuple(
                            ReceivedEvent(e.name, _attributes(e.attributes), e.time_unix_nano)
                            for e in span.events
                        ),
                        status_code=span.status.code,
                        status_message=span.status.message,
                        start_unix_nano=span.start_time_unix_nano,
                        end_unix_nano=span.end_time_unix_nano,
                        resource=resource,
                        scope=scope_spans.scope.name,
                    ))
        with self._changed:
            self.requests += 1
            self.content_types.append(content_type)
            self.headers.append(headers or {})
            self._spans.extend(spans)
            self._changed.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def wait_for(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """Wait until ``done(spans)`` holds; the spans then, or AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"OTLP receiver: condition not met in {timeout}s; got"
                        f" {[s.name for s in self._spans]}"
                    )
                self._changed.wait(left)
            return list(self._spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
