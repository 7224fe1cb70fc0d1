"""The catalog is the one source of truth: the gateway's enums, the docs and the page agree with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gateway.errors import ErrorType
from gateway.events import EvictionReason, Omission, Rejection, StopReason
from telemetry.catalog import (
    ERROR_TYPES,
    EVICTION_REASONS,
    METRICS,
    OMISSION_REASONS,
    REJECTION_REASONS,
    STOP_REASONS,
    Kind,
)
from telemetry.docs import generate
from tests.support.paths import PY, REPO


def test_gateway_enums_are_the_catalogs_closed_sets() -> None:
    """What the gateway can say is what the catalog declares: a value missing from either side would be
    counted as "other" (or never exported at 0) in silence."""
    assert [e.value for e in ErrorType] == list(ERROR_TYPES)
    assert [r.value for r in StopReason] == list(STOP_REASONS)
    assert [r.value for r in EvictionReason] == list(EVICTION_REASONS)
    assert [r.value for r in Rejection] == list(REJECTION_REASONS)
    assert [r.value for r in Omission] == list(OMISSION_REASONS)


def test_every_metric_is_declared_once_with_prometheus_names() -> None:
    names = [metric.name for metric in METRICS]
    assert len(names) == len(set(names))
    for metric in METRICS:
        if metric.kind is Kind.COUNTER:
            assert metric.name.endswith("_total"), metric.name
        if metric.unit == "s":
            assert metric.name.endswith("_seconds"), metric.name
        if metric.kind is Kind.HISTOGRAM:
            assert list(metric.buckets) == sorted(metric.buckets) and metric.buckets, metric.name
        for label in metric.values:
            assert label in metric.labels, (metric.name, label)


def test_seed_metric_names_and_labels_are_exact() -> None:
    """The names and labels the two feature requests asked for, verbatim."""
    expected = {
        "mcp_gateway_requests_total": ("server_id", "method"),
        "mcp_gateway_request_duration_seconds": ("server_id", "method"),
        "mcp_gateway_active_servers": (),
        "mcp_gateway_server_starts_total": ("server_id",),
        "mcp_gateway_server_stops_total": ("server_id", "reason"),
        "mcp_gateway_errors_total": ("server_id", "error_type"),
        "mcp_server_tools_called_total": ("server_id", "tool_name"),
        "mcp_server_uptime_seconds": ("server_id",),
        "mcp_server_memory_bytes": ("server_id",),
        "mcp_session_pool_hits_total": ("gateway_id", "server_id"),
        "mcp_session_pool_misses_total": ("gateway_id", "server_id"),
        "mcp_session_pool_evictions_total": ("gateway_id", "server_id", "reason"),
        "mcp_session_pool_health_check_failures_total": ("gateway_id", "server_id"),
        "mcp_session_pool_active_sessions": ("gateway_id", "server_id"),
        "mcp_session_pool_size": ("gateway_id", "server_id"),
    }
    declared = {metric.name: metric.labels for metric in METRICS}
    for name, labels in expected.items():
        assert declared.get(name) == labels, name


def test_docs_metrics_md_is_generated_from_the_catalog() -> None:
    assert (REPO / "docs" / "metrics.md").read_text(encoding="utf-8") == generate(), (
        "docs/metrics.md is out of date: run `mcp-gateway metrics-doc`"
    )


def test_metrics_doc_command_writes_and_checks(tmp_path: Path) -> None:
    target = tmp_path / "metrics.md"
    check = [PY, "-m", "gateway", "metrics-doc", "--output", str(target), "--check"]
    assert subprocess.run(check, cwd=REPO, capture_output=True).returncode == 1
    subprocess.run([PY, "-m", "gateway", "metrics-doc", "--output", str(target)], cwd=REPO, check=True)
    assert target.read_text(encoding="utf-8") == generate()
    assert subprocess.run(check, cwd=REPO, capture_output=True).returncode == 0
