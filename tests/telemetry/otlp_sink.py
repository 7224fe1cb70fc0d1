"""A small OTLP/HTTP metrics receiver on 127.0.0.1, for tests that push OTLP somewhere real.

It answers `POST /v1/metrics` (protobuf, plain or gzip) with an empty `ExportMetricsServiceResponse`
and keeps every decoded request. `latest(instrument)` folds them into what a backend would show
now: for each attribute set, the newest cumulative point (a number for sums and gauges, count and
sum for histograms).
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

Attributes = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class HistogramValue:
    count: int
    sum: float


def attributes(values: Iterable[KeyValue]) -> dict[str, str]:
    """OTLP attributes as a str -> str dict (scalars only: all this gateway records)."""
    return {kv.key: _scalar(kv.value) for kv in values}


def _scalar(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


class OtlpSink:
    """Start with `start()` (or as a context manager); `endpoint` is the base URL to export to."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self._requests: list[ExportMetricsServiceRequest] = []
        self.rejected: list[str] = []  # what it could not take: path, encoding or body, for failure messages
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as exporters expect

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = sink._receive(self.path, self.headers.get("Content-Encoding", ""), body)
                payload = ExportMetricsServiceResponse().SerializeToString() if status == 200 else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: failures are reported through `rejected`

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="otlp-sink", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> OtlpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _receive(self, path: str, encoding: str, body: bytes) -> int:
        if path.split("?")[0] != "/v1/metrics":
            self.rejected.append(f"POST {path}")
            return 404
        try:
            if encoding.strip().lower() == "gzip":
                body = gzip.decompress(body)
            elif encoding.strip() not in ("", "identity"):
                self.rejected.append(f"Content-Encoding {encoding}")
                return 415
            request = ExportMetricsServiceRequest.FromString(body)
        except Exception as exc:  # a test reads `rejected`; the exporter sees a 400
            self.rejected.append(f"undecodable body: {exc!r}")
            return 400
        with self._lock:
            self._requests.append(request)
        return 200

    @property
    def requests(self) -> list[ExportMetricsServiceRequest]:
        with self._lock:
            return list(self._requests)

    def metrics(self) -> Iterator[tuple[dict[str, str], Metric]]:
        """Every metric received so far, with its resource's attributes."""
        for request in self.requests:
            for resource_metrics in request.resource_metrics:
                resource = attributes(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        yield resource, metric

    def names(self) -> set[str]:
        return {metric.name for _, metric in self.metrics()}

    def resources(self) -> list[dict[str, str]]:
        """The distinct resources that pushed, in arrival order."""
        found: list[dict[str, str]] = []
        for resource, _ in self.metrics():
            if resource not in found:
                found.append(resource)
        return found

    def latest(self, instrument: str) -> dict[Attributes, float | HistogramValue]:
        """For each attribute set of `instrument`, its newest cumulative point; {} before any arrives."""
        newest: dict[Attributes, tuple[int, float | HistogramValue]] = {}
        for _, metric in self.metrics():
            if metric.name != instrument:
                continue
            kind = metric.WhichOneof("data")
            if kind in ("sum", "histogram"):
                temporality = getattr(metric, kind).aggregation_temporality
                cumulative = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
                assert temporality == cumulative, f"{instrument}: {AggregationTemporality.Name(temporality)} points"
            for when, attrs, value in _points(metric):
                if attrs not in newest or when >= newest[attrs][0]:
                    newest[attrs] = (when, value)
        return {attrs: value for attrs, (_, value) in newest.items()}

    def value(self, instrument: str, attrs: dict[str, str]) -> float | HistogramValue | None:
        """The newest point of `instrument` with exactly these attributes, or None."""
        return self.latest(instrument).get(frozenset(attrs.items()))


def _points(metric: Metric) -> Iterator[tuple[int, Attributes, float | HistogramValue]]:
    kind = metric.WhichOneof("data")
    if kind in ("sum", "gauge"):
        for point in getattr(metric, kind).data_points:
            number = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
            yield point.time_unix_nano, frozenset(attributes(point.attributes).items()), number
    elif kind == "histogram":
        for hist in metric.histogram.data_points:
            value = HistogramValue(hist.count, hist.sum)
            yield hist.time_unix_nano, frozenset(attributes(hist.attributes).items()), value
    else:
        raise AssertionError(f"{metric.name}: no support for {kind} points")
