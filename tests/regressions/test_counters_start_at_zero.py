"""Counters whose label values are known in advance exist at 0 from the start.

`mcp_session_pool_health_check_failures_total` had no series until the first failure, so the seed's
own query, `sum(rate(...[5m])) by (gateway_id)`, and the dashboard panel built on it showed "no
data" on a healthy fleet, and an alert on it could not tell healthy from unknown.
"""

from __future__ import annotations

from typing import Any

from telemetry.catalog import ERROR_TYPES, EVICTION_REASONS, OMISSION_REASONS, REJECTION_REASONS, STOP_REASONS
from tests.support.metrics import scrape
from tests.support.processes import demo_server


def test_a_fresh_gateway_exports_its_known_series_at_zero(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_server(), "other": demo_server()})  # both lazy: nothing has happened
    metrics = scrape(gw)
    pool = {"gateway_id": "test-gw"}
    for server in ("demo", "other"):
        assert metrics.value("mcp_session_pool_health_check_failures_total", **pool, server_id=server) == 0
        assert metrics.value("mcp_session_pool_hits_total", **pool, server_id=server) == 0
        assert metrics.value("mcp_session_pool_misses_total", **pool, server_id=server) == 0
        assert metrics.value("mcp_gateway_server_starts_total", server_id=server) == 0
        assert metrics.value("mcp_gateway_requests_total", server_id=server, method="tools/call") == 0
        for reason in EVICTION_REASONS:
            assert metrics.value("mcp_session_pool_evictions_total", **pool, server_id=server, reason=reason) == 0
        for reason in STOP_REASONS:
            assert metrics.value("mcp_gateway_server_stops_total", server_id=server, reason=reason) == 0
        for error in ERROR_TYPES:
            assert metrics.value("mcp_gateway_errors_total", server_id=server, error_type=error) == 0
        for reason in OMISSION_REASONS:
            assert metrics.value("mcp_gateway_aggregate_omissions_total", server_id=server, reason=reason) == 0
    for server in ("demo", "other", "_gateway"):
        for reason in REJECTION_REASONS:
            assert metrics.value("mcp_gateway_rejections_total", server_id=server, reason=reason) == 0
    assert metrics.value("mcp_gateway_event_loop_tasks") is not None
