"""Ground truth: a known script through a real gateway, then `/metrics` must say exactly what happened.

The script uses the official client: calls per server, method and tool, some failing in each way
the catalog names, one server killed, one stopped for idleness. Counters are checked to the unit,
histogram counts against the counters, gauges against the processes themselves (psutil).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import anyio
import psutil
import pytest
from mcp.shared.exceptions import MCPError

from telemetry.catalog import METRICS, Kind
from tests.support.mcp import mcp_session, raw_initialize, rpc
from tests.support.metrics import Metrics, scrape
from tests.support.processes import Upstream, demo_server, misbehaving_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


def _tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return int(process.memory_info().rss + sum(child.memory_info().rss for child in process.children(recursive=True)))


async def _calls(url: str, tool: str, arguments: dict[str, Any], times: int) -> list[Any]:
    async with mcp_session(url) as session:
        return [await session.call_tool(tool, arguments) for _ in range(times)]


async def test_metrics_tell_exactly_what_happened(gateway_factory: Any, http_upstream: Upstream) -> None:
    gw = gateway_factory(
        {
            "demo": demo_server(lazy=False),
            "remote": {"url": http_upstream.url, "lazy": False},
            "odd": misbehaving_server(lazy=False, request_timeout=1, restart={"backoff_initial": 0.05}),
            "sleepy": demo_server(lazy=False, idle_timeout=1),
        }
    )
    with anyio.fail_after(120):
        await _calls(gw.url("demo"), "echo", {"text": "x"}, 5)
        await _calls(gw.url("demo"), "add", {"a": 1, "b": 2}, 3)
        failed = await _calls(gw.url("demo"), "fail", {"message": "no"}, 2)
        assert all(result.is_error for result in failed)
        await _calls(gw.url(), "remote__echo", {"text": "y"}, 4)
        async with mcp_session(gw.url("odd")) as session:
            with pytest.raises(MCPError):
                await session.call_tool("hang", {})  # times out after 1 s
            with pytest.raises(MCPError):
                await session.call_tool("crash", {})  # the process exits mid-call
        await eventually(lambda: gw.server("odd")["state"] == "running", what="odd to restart")
        async with mcp_session(gw.url()) as session:
            with pytest.raises(MCPError):
                await session.call_tool("nope__echo", {})  # no such server: answered by the gateway

    # A random tool name the server never advertised is counted, but under tool_name="unknown".
    session_id = raw_initialize(gw, "/servers/demo/mcp")
    for n in range(3):
        call = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": f"random-{n}", "arguments": {}}}
        assert rpc(gw, "/servers/demo/mcp", call, session_id).status_code == 200

    # Kill demo (crash), let sleepy go idle.
    demo_pid = gw.server("demo")["pid"]
    os.kill(demo_pid, signal.SIGKILL)
    await eventually(
        lambda: (s := gw.server("demo"))["state"] == "running" and s["pid"] != demo_pid, what="demo restart"
    )
    await eventually(lambda: gw.server("sleepy")["state"] == "stopped", what="sleepy to go idle")

    metrics = scrape(gw)
    servers = gw.servers()

    def count(name: str, **labels: str) -> float | None:
        return metrics.value(name, **labels)

    # requests and tools, by server, method and tool
    assert count("mcp_gateway_requests_total", server_id="demo", method="tools/call") == 13  # 5 + 3 + 2 + 3 random
    assert count("mcp_gateway_requests_total", server_id="remote", method="tools/call") == 4
    assert count("mcp_gateway_requests_total", server_id="odd", method="tools/call") == 2
    assert count("mcp_gateway_requests_total", server_id="_gateway", method="tools/call") == 1
    assert count("mcp_gateway_requests_total", server_id="demo", method="initialize") == 4
    assert count("mcp_server_tools_called_total", server_id="demo", tool_name="echo") == 5
    assert count("mcp_server_tools_called_total", server_id="demo", tool_name="add") == 3
    assert count("mcp_server_tools_called_total", server_id="demo", tool_name="fail") == 2
    assert count("mcp_server_tools_called_total", server_id="demo", tool_name="unknown") == 3
    assert count("mcp_server_tools_called_total", server_id="remote", tool_name="echo") == 4
    called = {
        dict(labels)["tool_name"]
        for (name, labels), value in metrics.samples.items()
        if name == "mcp_server_tools_called_total" and value
    }
    assert called == {"echo", "add", "fail", "unknown", "hang", "crash"}
    # every tool a server advertised has its series from the start, at 0 until called
    assert count("mcp_server_tools_called_total", server_id="demo", tool_name="progress") == 0
    assert count("mcp_server_tools_called_total", server_id="remote", tool_name="whoami") == 0

    # errors, by type
    # 2 failing calls, and the 3 unknown names: the SDK server answers those with isError too
    assert count("mcp_gateway_errors_total", server_id="demo", error_type="tool_error") == 5
    assert count("mcp_gateway_errors_total", server_id="odd", error_type="timeout") == 1
    assert count("mcp_gateway_errors_total", server_id="odd", error_type="transport") == 1
    assert count("mcp_gateway_errors_total", server_id="_gateway", error_type="not_found") == 1
    assert metrics.total("mcp_gateway_errors_total", server_id="remote") == 0

    # the duration histogram counts what the counter counts, for every series
    for (name, labels), value in metrics.samples.items():
        if name == "mcp_gateway_requests_total":  # a series at 0 from the start has no histogram yet
            assert (metrics.value("mcp_gateway_request_duration_seconds_count", **dict(labels)) or 0) == value, labels

    # starts and stops, by reason
    assert count("mcp_gateway_server_starts_total", server_id="demo") == 2
    assert count("mcp_gateway_server_stops_total", server_id="demo", reason="crash") == 1
    assert count("mcp_gateway_server_starts_total", server_id="odd") == 2
    assert count("mcp_gateway_server_stops_total", server_id="odd", reason="crash") == 1
    # sleepy stops after each idle second; the aggregate endpoint may have started it again meanwhile
    # (a client on /mcp lists every server's tools), so: as many idle stops as starts, at least one.
    sleepy_starts = count("mcp_gateway_server_starts_total", server_id="sleepy")
    assert sleepy_starts and count("mcp_gateway_server_stops_total", server_id="sleepy", reason="idle") == sleepy_starts
    assert count("mcp_gateway_server_start_duration_seconds_count", server_id="demo") == 2

    # gauges: what is running, in flight, and how much memory it uses
    running = {sid for sid, s in servers.items() if s["state"] == "running"}
    assert running == {"demo", "remote", "odd"}
    assert count("mcp_gateway_active_servers") == len(running)
    for sid in running:
        assert count("mcp_gateway_inflight_requests", server_id=sid) == 0
    for sid in ("demo", "odd"):
        reported = count("mcp_server_memory_bytes", server_id=sid)
        actual = _tree_rss(servers[sid]["pid"])
        assert reported is not None and abs(reported - actual) <= 0.2 * actual, (sid, reported, actual)
    assert count("mcp_server_memory_bytes", server_id="remote") is None  # a remote server has no process here
    assert count("mcp_server_uptime_seconds", server_id="sleepy") is None  # not running
    for sid in running:
        uptime = count("mcp_server_uptime_seconds", server_id=sid)
        since_start = time.time() - servers[sid]["started_at"]
        assert uptime is not None and 0 <= uptime <= since_start + 5, (sid, uptime, since_start)

    # the pool: every request took a session, a miss once per session created
    assert count("mcp_session_pool_misses_total", gateway_id="test-gw", server_id="remote") == 1
    assert count("mcp_session_pool_size", gateway_id="test-gw", server_id="remote") == 1

    _assert_only_catalog_families(metrics)


def _assert_only_catalog_families(metrics: Metrics) -> None:
    allowed = {"target_info"}
    for metric in METRICS:
        if metric.kind is Kind.HISTOGRAM:
            allowed |= {f"{metric.name}_bucket", f"{metric.name}_count", f"{metric.name}_sum"}
        else:
            allowed.add(metric.name)
    http = {name for name, _ in metrics.samples if name.startswith("http_server_")}
    unknown = {name for name, _ in metrics.samples} - allowed - http
    assert unknown == set(), f"families on /metrics that the catalog does not declare: {unknown}"
