"""What the telemetry pipeline is told: typed, already-valid values, built by the caller from its config.

Standard OpenTelemetry environment variables are read here too, so one place decides whether the
OTLP reader runs, with which protocol, endpoint, headers, interval and temporality.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

OtlpProtocol = Literal["http/protobuf", "grpc"]
Temporality = Literal["cumulative", "delta", "lowmemory"]


@dataclass(frozen=True)
class OtlpSettings:
    protocol: OtlpProtocol = "http/protobuf"
    endpoint: str | None = None  # None: the exporter's own default or the OTEL_EXPORTER_OTLP_* variables
    headers: dict[str, str] = field(default_factory=dict)
    interval_seconds: float = 60.0
    temporality: Temporality = "cumulative"


@dataclass(frozen=True)
class TelemetrySettings:
    gateway_id: str
    service_version: str = "0"
    semconv: bool = True  # the MCP semantic-convention histograms
    scope_labels: bool = False  # otel_scope_* labels on every Prometheus series
    cardinality_limit: int = 2000  # (server, tool) and (server, prompt) label pairs; more count as "other"
    server_ids: tuple[str, ...] = ()  # the configured servers: their counters start at 0
    otlp: OtlpSettings | None = None


def otlp_from_env(env: Mapping[str, str] | None = None, *, enabled: bool | None = None) -> OtlpSettings | None:
    """The OTLP reader as the standard variables ask for it; None when nothing asks.

    `enabled` from config wins; otherwise OTEL_METRICS_EXPORTER containing "otlp", or an OTLP
    endpoint variable being set, turns it on.
    """
    env = os.environ if env is None else env
    exporters = {part.strip() for part in env.get("OTEL_METRICS_EXPORTER", "").split(",")}
    endpoint = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if enabled is None:
        enabled = "otlp" in exporters or bool(endpoint)
    if not enabled:
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in ("http/protobuf", "grpc"):
        protocol = "http/protobuf"
    interval_ms = env.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    temporality = env.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "cumulative").lower()
    return OtlpSettings(
        protocol=protocol,  # type: ignore[arg-type]
        endpoint=None,  # the exporters read OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT and HEADERS themselves
        interval_seconds=max(0.1, float(interval_ms) / 1000) if interval_ms.replace(".", "", 1).isdigit() else 60.0,
        temporality=temporality if temporality in ("cumulative", "delta", "lowmemory") else "cumulative",  # type: ignore[arg-type]
    )
