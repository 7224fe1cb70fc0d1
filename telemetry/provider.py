"""One MeterProvider per process, with its readers: Prometheus always, OTLP when asked.

The Prometheus reader (`exposition.PrometheusReader`) renders `/metrics` from this provider alone,
so nothing else in the process leaks into the page. The OTLP reader pushes the same instruments
periodically. On shutdown the provider is shut down, never force-flushed: with the stock
Prometheus exporter (0.66b2) a provider-wide `force_flush` made the next scrape repeat whole
families, and flushing a pull reader has no use anyway.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics._internal.exemplar import ExemplarReservoir
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource

from telemetry.exposition import PrometheusReader
from telemetry.settings import OtlpSettings, TelemetrySettings

log = logging.getLogger(__name__)

SERVICE_NAME = "mcp-gateway"


@dataclass
class Pipeline:
    provider: MeterProvider
    prometheus: PrometheusReader
    otlp: PeriodicExportingMetricReader | None
    resource: Resource

    def shutdown(self) -> None:
        """Push what OTLP has not sent yet, then stop, within about 5 s even with the collector down; never raises.

        The OTLP reader's shutdown makes one last export itself and, after the timeout, aborts its
        retries. No `force_flush` first: the exporters ignore its timeout and retry for their own
        (10 s by default), so with an unreachable collector it held shutdown for 20 s or more.
        """
        try:
            self.provider.shutdown(timeout_millis=5000)
        except Exception:  # telemetry must not break shutdown
            log.exception("telemetry shutdown failed")


class _NoExemplars(ExemplarReservoir):
    """Exemplars sample spans, and the gateway emits none: the SDK's empty reservoirs still cost
    ~100 ms of every scrape of a large fleet (10,000 histogram series), so keep none."""

    def __init__(self, **kwargs: Any) -> None:
        pass

    def offer(self, value: int | float, time_unix_nano: int, attributes: Any, context: Any) -> None:
        pass

    def collect(self, point_attributes: Any) -> list[Any]:
        return []


def _no_exemplars(aggregation: type) -> Callable[..., ExemplarReservoir]:
    return _NoExemplars


_NO_EXEMPLARS = View(instrument_name="*", exemplar_reservoir_factory=_no_exemplars)


def build_resource(settings: TelemetrySettings) -> Resource:
    """The gateway's resource: defaults for what the environment (`OTEL_RESOURCE_ATTRIBUTES`,
    `OTEL_SERVICE_NAME`) leaves unset. A replica's stable name, e.g. its pod's, given as
    `service.instance.id` replaces the random id a process gets otherwise."""
    defaults = {
        "service.name": SERVICE_NAME,
        "service.version": settings.service_version,
        "service.instance.id": str(uuid.uuid4()),
    }
    given = {pair.split("=", 1)[0].strip() for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")}
    if os.environ.get("OTEL_SERVICE_NAME"):
        given.add("service.name")
    attributes = {key: value for key, value in defaults.items() if key not in given}
    # Always the config's: the gateway_id label of the pool metrics is the same value.
    attributes["mcp_gateway.id"] = settings.gateway_id
    return Resource.create(attributes)


def _temporality(setting: str) -> dict[type, AggregationTemporality]:
    """The OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE table of the OpenTelemetry spec."""
    delta, cumulative = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE
    deltas: set[type] = {Counter, Histogram}
    if setting == "delta":
        deltas.add(ObservableCounter)
    elif setting != "lowmemory":
        deltas = set()
    kinds = (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge)
    return {kind: delta if kind in deltas else cumulative for kind in kinds}


def otlp_exporter(otlp: OtlpSettings) -> MetricExporter:
    """The OTLP metric exporter for the protocol; unset fields fall back to the OTEL_* variables."""
    temporality = _temporality(otlp.temporality)
    headers = otlp.headers or None
    if otlp.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        endpoint = otlp.endpoint
        insecure = endpoint.startswith("http://") if endpoint else None
        return GrpcExporter(endpoint=endpoint, headers=headers, insecure=insecure, preferred_temporality=temporality)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    endpoint = otlp.endpoint
    if endpoint and not endpoint.rstrip("/").endswith("/v1/metrics"):
        endpoint = endpoint.rstrip("/") + "/v1/metrics"
    return HttpExporter(endpoint=endpoint, headers=headers, preferred_temporality=temporality)


def build_pipeline(settings: TelemetrySettings) -> Pipeline:
    prometheus = PrometheusReader(scope_labels=settings.scope_labels)
    readers: list[PrometheusReader | PeriodicExportingMetricReader] = [prometheus]
    otlp_reader = None
    if settings.otlp is not None:
        otlp_reader = PeriodicExportingMetricReader(
            otlp_exporter(settings.otlp), export_interval_millis=settings.otlp.interval_seconds * 1000
        )
        readers.append(otlp_reader)
    resource = build_resource(settings)
    provider = MeterProvider(
        metric_readers=readers, resource=resource, views=[_NO_EXEMPLARS], exemplar_filter=AlwaysOffExemplarFilter()
    )
    return Pipeline(provider, prometheus, otlp_reader, resource)
