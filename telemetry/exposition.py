"""`/metrics`: a metric reader that renders the Prometheus text format (0.0.4) or OpenMetrics itself.

The stock `PrometheusMetricReader` translates every point into prometheus_client objects and then
formats them; for a fleet of 100 servers x 50 tools with the semantic-convention histograms that
took ~1.9 s a scrape here. This reader formats the SDK's points directly with cached label strings
(see bench/telemetry.py). Families are named by the catalog; anything else (HTTP server metrics)
gets the usual OpenTelemetry-to-Prometheus name. Rendering runs collection callbacks: call it off
the event loop. Pages are gzipped when the scraper accepts it.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import math
import re
import threading
from collections.abc import Iterable, Iterator
from itertools import accumulate
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    MetricReader,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData

from telemetry.catalog import METRICS

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_GZIP_OVER = 1024
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "ratio"}
_FAMILY = {metric.instrument: metric.name for metric in METRICS}
_NEWLINES = ("\n",) * 64  # more than any histogram has buckets


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)


def family_name(instrument: str, unit: str, monotonic_sum: bool) -> str:
    """The Prometheus family for an instrument: the catalog's name, else the usual conversion."""
    known = _FAMILY.get(instrument)
    if known is not None:
        return known
    name = _INVALID.sub("_", instrument)
    suffix = _UNIT_SUFFIX.get(unit) if unit and not unit.startswith("{") else None
    if suffix and not name.endswith(suffix):
        name = f"{name}_{suffix}"
    if monotonic_sum and not name.endswith("_total"):
        name += "_total"
    return name


@contextlib.contextmanager
def _no_gc_pause() -> Iterator[None]:
    """Hold the cyclic garbage collector off while a page is built.

    A render allocates a data point per series and frees them all by reference counting; on a large
    fleet those allocations set off full collections that walk every live object, and took a third
    of the render's time (bench/telemetry.py). Collection resumes when the page is done.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class PrometheusReader(MetricReader):
    """Collects on scrape and renders the page; cumulative temporality, as Prometheus expects."""

    def __init__(self, scope_labels: bool = False) -> None:
        cumulative = AggregationTemporality.CUMULATIVE
        super().__init__(
            preferred_temporality={
                kind: cumulative
                for kind in (
                    Counter,
                    UpDownCounter,
                    Histogram,
                    ObservableCounter,
                    ObservableUpDownCounter,
                    ObservableGauge,
                )
            }
        )
        self._scope_labels = scope_labels
        self._data: MetricsData | None = None
        self._lock = threading.Lock()
        self._labels: dict[Any, str] = {}
        self._series: dict[Any, tuple[list[str], str, str]] = {}

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self._data = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._data = None

    def render(self, openmetrics: bool = False) -> bytes:
        with self._lock, _no_gc_pause():
            self.collect()
            data, self._data = self._data, None
            if data is None:
                return b"# EOF\n" if openmetrics else b""
            out: list[str] = []
            self._render(data, out, openmetrics)
            if len(self._labels) + len(self._series) > 400_000:  # series come and go: keep the caches bounded
                self._labels.clear()
                self._series.clear()
            return "".join(out).encode()

    # -- formatting ----------------------------------------------------------------------------------

    def _label_string(self, attributes: Any, extra: str = "") -> str:
        key = (tuple(attributes.items()) if attributes else (), extra)
        cached = self._labels.get(key)
        if cached is None:
            parts = [f'{_INVALID.sub("_", str(k))}="{_escape(str(v))}"' for k, v in key[0]]
            if extra:
                parts.append(extra)
            cached = self._labels[key] = ",".join(parts)
        return cached

    def _render(self, data: MetricsData, out: list[str], openmetrics: bool) -> None:
        seen: set[str] = set()
        for resource_metrics in data.resource_metrics:
            resource = resource_metrics.resource.attributes
            if resource:
                labels = ",".join(f'{_INVALID.sub("_", k)}="{_escape(str(v))}"' for k, v in resource.items())
                # OpenMetrics names the info family "target"; its sample is still target_info.
                family, kind = ("target", "info") if openmetrics else ("target_info", "gauge")
                out.append(f"# HELP {family} Target metadata\n# TYPE {family} {kind}\ntarget_info{{{labels}}} 1\n")
            for scope_metrics in resource_metrics.scope_metrics:
                scope = ""
                if self._scope_labels:
                    s = scope_metrics.scope
                    scope = f'otel_scope_name="{_escape(s.name)}",otel_scope_version="{_escape(s.version or "")}"'
                for metric in scope_metrics.metrics:
                    self._metric(metric, scope, out, openmetrics, seen)
        if openmetrics:
            out.append("# EOF\n")

    def _metric(self, metric: Any, scope: str, out: list[str], openmetrics: bool, seen: set[str]) -> None:
        data = metric.data
        if isinstance(data, Sum):
            kind = "counter" if data.is_monotonic else "gauge"
            name = family_name(metric.name, metric.unit, data.is_monotonic)
        elif isinstance(data, Gauge):
            kind, name = "gauge", family_name(metric.name, metric.unit, False)
        elif isinstance(data, HistogramData):
            kind, name = "histogram", family_name(metric.name, metric.unit, False)
        else:
            return  # exponential histograms have no classic text form
        if name in seen:
            return  # one family per name, however many scopes record it
        seen.add(name)
        base = name.removesuffix("_total") if openmetrics and kind == "counter" else name
        help_text = (metric.description or metric.name).replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {base} {help_text}\n# TYPE {base} {kind}\n")
        if kind == "histogram":
            self._histogram(name, data.data_points, scope, out)
            return
        sample = f"{base}_total" if openmetrics and kind == "counter" else name
        for point in data.data_points:
            labels = self._label_string(point.attributes, scope)
            out.append(
                f"{sample}{{{labels}}} {_number(point.value)}\n" if labels else f"{sample} {_number(point.value)}\n"
            )

    def _histogram(self, name: str, points: Iterable[Any], scope: str, out: list[str]) -> None:
        for point in points:
            # Every line of a series but its numbers, built once per series and kept across scrapes.
            key = (name, tuple(point.attributes.items()) if point.attributes else (), scope, point.explicit_bounds)
            template = self._series.get(key)
            if template is None:
                template = self._series[key] = self._histogram_template(name, point, scope)
            buckets, count, total = template
            lines = zip(buckets, map(str, accumulate(point.bucket_counts)), _NEWLINES, strict=False)
            out.append("".join(map("".join, lines)))
            out.append(f"{count}{point.count}\n{total}{_number(point.sum)}\n")

    def _histogram_template(self, name: str, point: Any, scope: str) -> tuple[list[str], str, str]:
        labels = self._label_string(point.attributes, scope)
        prefix = f"{name}_bucket{{{labels}," if labels else f"{name}_bucket{{"
        bounds = [f'le="{_number(float(b))}"}} ' for b in point.explicit_bounds] + ['le="+Inf"} ']
        suffix = f"{{{labels}}} " if labels else " "
        return [prefix + le for le in bounds], f"{name}_count{suffix}", f"{name}_sum{suffix}"


def render(reader: PrometheusReader, openmetrics: bool = False, gzipped: bool = False) -> tuple[bytes, dict[str, str]]:
    """The page and its headers, in the format and encoding the caller negotiated with the scraper."""
    body = reader.render(openmetrics)
    headers = {
        "Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE,
        "Vary": "Accept, Accept-Encoding",
    }
    if gzipped and len(body) > _GZIP_OVER:
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return body, headers
