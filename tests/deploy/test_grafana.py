"""The Grafana dashboard (`deploy/grafana/dashboards/mcp-gateway.json`) checked against real data.

A gateway with two upstreams (the stdio demo server, an HTTP server) gets a scripted load, twice: tool
calls, a failing tool, operator stops and restarts, a health check that fails and opens the circuit
breaker, a crash under a call in flight. A real Prometheus scrapes it every second; then every panel's
every query, template variables substituted as Grafana would, must parse and show a non-zero value.
The JSON also round-trips through grafana-foundation-sdk, Grafana's own typed model of a dashboard,
without losing a key.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from telemetry.catalog import METRICS
from tests.support.mcp import call_outcome, mcp_session
from tests.support.paths import REPO
from tests.support.processes import (
    FAST_RESTART,
    Gateway,
    Upstream,
    demo_server,
    start_gateway,
    start_http_upstream,
    stop_gateway,
)
from tests.support.waiting import eventually, wait_for
from tests.telemetry.prometheus import Prometheus, run_prometheus

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "mcp-gateway.json"
DEMO, REMOTE = "demo", "remote"
GATEWAY_ID = "dashboard-gw"
JOB = "mcp-gateway"

# The remote server's pool: a session idle 0.5 s is pinged before use, and one failed ping opens the
# breaker for a second, so the scenario can show health-check failures and an open breaker.
REMOTE_POOL = {"health_check_interval": 0.5, "health_check_timeout": 0.5, "failure_threshold": 1, "cooldown": 1}

# The three queries of the session-pool feature request, which the dashboard keeps verbatim (plus
# the template variables' label filters).
FEATURE_REQUEST_QUERIES = (
    "sum(rate(mcp_session_pool_hits_total[5m])) / (sum(rate(mcp_session_pool_hits_total[5m]))"
    " + sum(rate(mcp_session_pool_misses_total[5m])))",
    "sum(rate(mcp_session_pool_health_check_failures_total[5m])) by (gateway_id)",
    "mcp_session_pool_active_sessions",
)

# Panel targets ("title [refId]") the scenario leaves empty or all zero, with why. The scenario produces
# every other condition the dashboard shows (errors, crashes, stops, health-check failures, an open
# breaker, a request in flight, a refusal). A new panel the scenario cannot drive goes here, with its reason.
NOT_SHOWN: dict[str, str] = {
    "Servers left out of /mcp [A]": "needs a server that starts slower than limits.cold_start_wait; "
    "tests/regressions/test_cold_starts_do_not_stall_the_aggregate.py drives and counts it",
    "Input-required rounds, held calls and listen streams [A]": "needs a server asking for input; "
    "tests/gateway/test_pairings.py and test_request_state.py drive and count it",
    "Input-required rounds, held calls and listen streams [B]": "needs a 2026 client listening; "
    "tests/gateway/test_listen.py drives and counts it",
    "Input-required rounds, held calls and listen streams [C]": "needs a call held for a 2026 client's answer; "
    "tests/gateway/test_modern.py drives and counts it",
}


@dataclass(frozen=True)
class Target:
    panel: str
    ref_id: str
    expr: str
    instant: bool

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref_id}]"


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _targets(dashboard: dict[str, Any]) -> list[Target]:
    return [
        Target(panel["title"], target["refId"], target["expr"], bool(target.get("instant")))
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every scalar and every empty container in a JSON document."""
    if isinstance(value, dict | list) and not value:
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


# -- 1. the JSON itself --------------------------------------------------------------------------


def test_dashboard_round_trips_through_the_foundation_sdk() -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import prometheus
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel

    register_default_plugins()  # typed panel options and Prometheus queries, not opaque dicts
    original = _dashboard()
    model = Dashboard.from_json(original)
    again = json.loads(json.dumps(model, cls=JSONEncoder))

    # The SDK knew every panel type and every query: nothing went through as an untyped bag.
    panels = [panel for panel in model.panels or [] if isinstance(panel, Panel)]
    assert panels and all(not isinstance(panel.options, dict) for panel in panels)
    queries = [query for panel in panels for query in panel.targets or []]
    assert len(queries) == len(_targets(original))
    assert all(isinstance(query, prometheus.Dataquery) for query in queries)

    # Every key survives with its value; the SDK only adds its defaults.
    before, after = dict(_leaves(original)), dict(_leaves(again))
    lost = {path: value for path, value in before.items() if path not in after}
    changed = {path: (value, after[path]) for path, value in before.items() if path in after and after[path] != value}
    assert lost == {} and changed == {}, f"unknown to the SDK: {lost}; changed: {changed}"


def test_dashboard_identity_variables_and_layout() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "mcp-gateway" and dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance", "gateway_id", "server_id"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["server_id"]["multi"] and variables["server_id"]["includeAll"]
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == [
        "Overview",
        "Session pool",
        "MCP semantic conventions",
        "Protection",
        "Protocol (MCP 2025 and 2026-07-28)",
    ]
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel.get("description"), f"{panel['title']}: say what the panel answers"
    # Panels do not overlap on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in _panels(dashboard):
        pos = panel["gridPos"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert pos["x"] + pos["w"] <= 24 and not mine & cells, panel["title"]
        cells |= mine


_SELECTOR = re.compile(r"\b([a-z_]+?)(_bucket|_count|_sum)?(\{[^}]*\})?(?=[\s\[),]|$)")


def test_every_query_filters_by_the_template_variables() -> None:
    """Each series selector of a gateway family filters by job and instance, and by server_id and
    gateway_id where the family has them (the catalog says which)."""
    families = {metric.name: set(metric.labels) for metric in METRICS}
    for target in _targets(_dashboard()):
        seen = []
        for match in _SELECTOR.finditer(target.expr):
            name, _, selector = match.groups()
            if name not in families:
                continue
            seen.append(name)
            wanted = {"job", "instance"} | ({"server_id", "gateway_id"} & families[name])
            matchers = {m.group(1): m.group(2) for m in re.finditer(r'(\w+)=~"\$(\w+)"', selector or "")}
            assert all(matchers.get(label) == label for label in wanted), f"{target.name}: {name}{selector}"
        assert seen, f"{target.name} reads no gateway family: {target.expr}"
    exprs = {re.sub(r"\{[^}]*\}", "", target.expr) for target in _targets(_dashboard())}
    for query in FEATURE_REQUEST_QUERIES:
        assert query in exprs, query


# -- 2. every query against a real Prometheus ------------------------------------------------------


@dataclass
class Scenario:
    gw: Gateway
    upstream: Upstream
    prometheus: Prometheus
    started: float  # wall-clock time Prometheus started: the dashboard's time range begins here

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.gw.port}"


async def _calls(gw: Gateway, server: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    async with mcp_session(gw.url(server)) as session:
        for tool, arguments in calls:
            result = await session.call_tool(tool, arguments)
            assert result.is_error == (tool == "fail"), result


def _sessions(gw: Gateway, server: str) -> dict[str, Any]:
    response = gw.get(f"/servers/{server}/sessions")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _admin(gw: Gateway, server: str, action: str) -> None:
    response = gw.post(f"/servers/{server}/{action}")
    assert response.status_code == 200, response.text


async def _failed_health_check(scenario: Scenario) -> None:
    """The HTTP upstream freezes (SIGSTOP) under an idle pooled session: the ping before the next call
    times out, the breaker opens and the call fails fast; after SIGCONT and the cooldown it recovers."""
    gw, pid = scenario.gw, scenario.upstream.proc.pid
    async with mcp_session(gw.url(REMOTE)) as session:
        await session.call_tool("echo", {"text": "before"})
        await eventually(
            lambda: (pooled := _sessions(gw, REMOTE)["sessions"]) and all(s["idle_seconds"] > 0.6 for s in pooled),
            what="the pooled session to be due a health check",
        )
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(MCPError, match="circuit breaker is open"):
                await session.call_tool("echo", {"text": "frozen"})
        finally:
            os.kill(pid, signal.SIGCONT)
        assert _sessions(gw, REMOTE)["breaker"]["state"] == "open"
        # The breaker stays open until a request after the cooldown: let Prometheus see it.
        scenario.prometheus.wait_for_value(
            f'mcp_session_pool_circuit_state{{gateway_id="{GATEWAY_ID}", server_id="{REMOTE}"}}', 2
        )

        async def let_through() -> bool:  # fails fast until the cooldown has passed; then the probe succeeds
            try:
                await session.call_tool("echo", {"text": "after"})
            except MCPError:
                return False
            return True

        await eventually(let_through, 30, "the breaker to let a call through after its cooldown")
    assert _sessions(gw, REMOTE)["breaker"]["state"] == "closed"


async def _crash_mid_call(scenario: Scenario) -> None:
    """The demo server is killed under a slow call: the call fails, the stop is a crash, it restarts."""
    gw, inflight = scenario.gw, f'mcp_gateway_inflight_requests{{server_id="{DEMO}"}}'
    pid = gw.server(DEMO)["pid"]
    async with mcp_session(gw.url(DEMO)) as session:
        outcome: dict[str, Any] = {}
        with anyio.fail_after(30):  # far below the 60 s the sleep would take
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call_outcome, session.call_tool("sleep", {"seconds": 60}), outcome)
                await eventually(lambda: gw.server(DEMO)["in_flight"] == 1, what="the sleep call in flight")
                await eventually(
                    lambda: [item["value"] for item in scenario.prometheus.query(inflight)] == [1],
                    what="Prometheus to see the call in flight",
                )
                os.kill(pid, signal.SIGKILL)
        assert outcome["error"].data["reason"] == "crash", outcome
    await eventually(lambda: gw.server(DEMO)["state"] == "running", what="demo to restart after its crash")


async def _load(scenario: Scenario) -> None:
    gw = scenario.gw
    # Twice: a counter's series appears at its first increment, so only the second round's
    # increments show up in rate() and increase() (the first round's scrapes are their baseline).
    for _ in range(2):
        with anyio.fail_after(120):
            await _calls(gw, DEMO, [("echo", {"text": "a"})] * 5 + [("add", {"a": 1, "b": 2})] * 3)
            await _calls(gw, DEMO, [("fail", {"message": "no"})] * 2)
            await _calls(gw, REMOTE, [("echo", {"text": "b"})] * 4 + [("add", {"a": 2, "b": 3})] * 2)
            # A page on another site tries an admin action: refused (and counted) before it runs.
            assert gw.post(f"/servers/{DEMO}/stop", headers={"Origin": "https://evil.example"}).status_code == 403
            # Operators at work: a stop (reason manual; the next call starts the server again), a restart.
            _admin(gw, DEMO, "stop")
            await _calls(gw, DEMO, [("echo", {"text": "again"})])
            _admin(gw, REMOTE, "restart")
            await _failed_health_check(scenario)
            await _crash_mid_call(scenario)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    upstream = start_http_upstream("--name", REMOTE)
    try:
        servers = {
            DEMO: demo_server(lazy=False, restart=FAST_RESTART),
            # Spoken to in 2025 (the demo, in 2026-07-28): upstream sessions, and their panels, have data.
            REMOTE: {"url": upstream.url, "lazy": False, "pool": REMOTE_POOL, "protocol": "2025"},
        }
        gw = start_gateway(tmp_path_factory.mktemp("gateway"), servers, {"id": GATEWAY_ID})
        try:
            workdir = tmp_path_factory.mktemp("prometheus")
            started = time.time()
            with run_prometheus(workdir, [f"127.0.0.1:{gw.port}"], job=JOB) as prometheus:
                prometheus.wait_for_value(f'up{{job="{JOB}"}}', 1)
                state = Scenario(gw, upstream, prometheus, started)
                anyio.run(_load, state)
                yield state
        finally:
            stop_gateway(gw)
    finally:
        upstream.stop()


_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")


def _substitute(expr: str, values: dict[str, str]) -> str:
    """Template variables as Grafana fills them in; one the test does not know fails it."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown template variable ${name} in {expr}"
        return values[name]

    return _VARIABLE.sub(value, expr)


def _variables(scenario: Scenario, now: float) -> dict[str, str]:
    return _variables_for(scenario.instance, scenario.started, now)


def _variables_for(instance: str, started: float, now: float) -> dict[str, str]:
    return {
        "job": JOB,
        "instance": re.escape(instance).replace("\\", "\\\\"),  # Grafana's regex escaping, in a PromQL string
        "gateway_id": GATEWAY_ID,
        "server_id": ".*",  # "All", the variable's allValue
        "__rate_interval": "30s",
        "__interval": "1s",
        "__range": f"{math.ceil(now - started)}s",
    }


def _run(prometheus: Prometheus, promql: str, instant: bool, start: float, end: float) -> list[float]:
    """Every value the query returns, as Grafana asks it: a range query, or instant for tables."""
    if instant:
        path, params = "query", {"query": promql, "time": f"{end:.3f}"}
    else:
        path, params = "query_range", {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1s"}
    response = httpx.get(f"{prometheus.base}/api/v1/{path}", params=params, timeout=30)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{promql}: {response.text}"
    result = body["data"]["result"]
    if instant:
        return [float(item["value"][1]) for item in result]
    return [float(value) for item in result for _, value in item["values"]]


def test_every_panel_query_parses_and_returns_data(scenario: Scenario) -> None:
    """Every target parses; every one not in NOT_SHOWN shows a finite non-zero value in the time range."""
    targets = _targets(_dashboard())
    assert len(targets) > 30 and set(NOT_SHOWN) <= {target.name for target in targets}, NOT_SHOWN
    empty: dict[str, str] = {}

    def all_have_data() -> bool:
        empty.clear()
        end = time.time()
        variables = _variables(scenario, end)
        for target in targets:
            promql = _substitute(target.expr, variables)
            values = _run(scenario.prometheus, promql, target.instant, scenario.started, end)
            if target.name not in NOT_SHOWN and not any(math.isfinite(v) and v != 0 for v in values):
                empty[target.name] = promql
        return not empty

    try:
        wait_for(all_have_data, 60, "every panel to show a non-zero value")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; empty or all zero: {json.dumps(empty, indent=2)}") from None


def test_variable_queries_find_the_scenario(scenario: Scenario) -> None:
    """Each query variable's `label_values(...)` offers what this gateway exposes."""
    expected = {"job": {JOB}, "instance": {scenario.instance}, "gateway_id": {GATEWAY_ID}, "server_id": {DEMO, REMOTE}}
    variables = {**_variables(scenario, time.time()), "instance": ".*", "gateway_id": ".*"}
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
        assert match, variable["query"]
        selector, label = _substitute(match.group(1), variables), match.group(2)
        response = httpx.get(
            f"{scenario.prometheus.base}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=30
        )
        assert response.status_code == 200, response.text
        assert set(response.json()["data"]) == expected[variable["name"]], (variable["name"], response.text)


def test_counter_panels_answer_zero_on_a_healthy_idle_fleet(tmp_path_factory: pytest.TempPathFactory) -> None:
    """On a gateway nothing has happened to, every panel over counters shows 0, not "no data".

    Panels over histograms (quantiles, durations) and gauges of things that do not exist yet (uptime
    of a stopped server) have nothing to show and are not asked.
    """
    counters = {metric.name for metric in METRICS if metric.name.endswith("_total")}
    targets = [
        target
        for target in _targets(_dashboard())
        if {match.group(1) for match in _SELECTOR.finditer(target.expr)} & counters
        and "_bucket" not in target.expr
        and "_count" not in target.expr
    ]
    assert len(targets) >= 10, [target.name for target in targets]
    servers = {DEMO: demo_server(lazy=False), REMOTE: demo_server()}  # one running, one never started: both idle
    gw = start_gateway(tmp_path_factory.mktemp("idle"), servers, {"id": GATEWAY_ID})
    try:
        with run_prometheus(tmp_path_factory.mktemp("idle-prometheus"), [f"127.0.0.1:{gw.port}"], job=JOB) as prom:
            started = time.time()
            prom.wait_for_value(f'up{{job="{JOB}"}}', 1)
            empty: list[str] = []

            def all_answer() -> bool:
                empty.clear()
                end = time.time()
                for target in targets:
                    promql = _substitute(target.expr, _variables_for(f"127.0.0.1:{gw.port}", started, end))
                    if not _run(prom, promql, True, started, end):
                        empty.append(f"{target.name}: {promql}")
                return not empty

            try:
                wait_for(all_answer, 60, "every counter panel to answer")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; no data: {json.dumps(empty, indent=2)}") from None
    finally:
        stop_gateway(gw)
