"""`/metrics` as Prometheus's own tools see it: promtool's linter, a real Prometheus scraping every second.

One gateway (a stdio demo server, an HTTP upstream, a spare server nobody calls) is shared by the
module: a warm-up drives calls, a failing tool and a manual stop, so every catalog family has
samples. Prometheus then scrapes it and answers the catalog's questions. A second gateway checks
the page's switches: the metrics token, the metrics port, scope labels and HTTP server metrics.
"""

from __future__ import annotations

import functools
import gzip
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from telemetry.catalog import METRICS, Kind
from tests.support.mcp import mcp_session
from tests.support.metrics import Metrics, parse_metrics, scrape
from tests.support.processes import Gateway, demo_server, free_port, start_gateway, start_http_upstream, stop_gateway
from tests.support.waiting import eventually
from tests.telemetry.prometheus import Prometheus, binary, run_prometheus

DEMO, REMOTE, SPARE = "demo", "remote", "spare"
GATEWAY_ID = "test-gw"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# Families this module's load does not drive, with where they are checked instead. When one shows
# up here anyway, the every-family test fails: take it off this list. (Counters whose label values
# are known in advance have samples at 0 from the start, so none is here now.)
NOT_YET_RECORDED: dict[str, str] = {}


@dataclass
class Busy:
    """The module's gateway and how many tools/call requests each server was sent through it."""

    gw: Gateway
    tool_calls: Counter[str] = field(default_factory=Counter)

    async def call(self, server: str, tool: str, arguments: dict[str, Any], times: int) -> list[Any]:
        """`times` calls of one tool in one client session (one initialize, then pool hits)."""
        results = []
        async with mcp_session(self.gw.url(server)) as session:
            for _ in range(times):
                results.append(await session.call_tool(tool, arguments))
                self.tool_calls[server] += 1
        return results


async def _warm_up(busy: Busy) -> None:
    with anyio.fail_after(60):
        await busy.call(DEMO, "echo", {"text": "x"}, 3)
        failed = await busy.call(DEMO, "fail", {"message": "no"}, 2)
        assert all(result.is_error for result in failed)
        await busy.call(REMOTE, "echo", {"text": "y"}, 2)
    # A manual stop: a stop with reason "manual", the pooled HTTP session evicted and its lifetime recorded.
    stopped = busy.gw.post(f"/servers/{REMOTE}/stop")
    assert stopped.status_code == 200, stopped.text
    assert busy.gw.server(REMOTE)["state"] == "stopped"
    with anyio.fail_after(60):
        await busy.call(REMOTE, "echo", {"text": "again"}, 1)  # connects again


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Busy]:
    upstream = start_http_upstream("--name", REMOTE)
    try:
        servers = {
            DEMO: demo_server(lazy=False),
            REMOTE: {"url": upstream.url, "lazy": False, "protocol": "2025"},  # upstream sessions: 2025
            SPARE: demo_server(),  # lazy and never called: no request series
        }
        gw = start_gateway(tmp_path_factory.mktemp("gateway"), servers)
        try:
            state = Busy(gw)
            anyio.run(_warm_up, state)
            yield state
        finally:
            stop_gateway(gw)
    finally:
        upstream.stop()


# -- helpers -------------------------------------------------------------------------------------


def _sample_names(family: str, kind: Kind) -> tuple[str, ...]:
    if kind is Kind.HISTOGRAM:
        return (f"{family}_bucket", f"{family}_count", f"{family}_sum")
    return (family,)


def _families_with_samples(metrics: Metrics) -> set[str]:
    present = {name for name, _ in metrics.samples}
    return {m.name for m in METRICS if all(name in present for name in _sample_names(m.name, m.kind))}


def _stable(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float | None]:
    """Every sample, without the values of gauges (uptime, memory: they move between scrapes)."""
    gauges = {m.name for m in METRICS if m.kind is Kind.GAUGE}
    return {key: None if key[0] in gauges else value for key, value in metrics.samples.items()}


def _promtool(page: str) -> None:
    """promtool's linter passes the page with nothing to say: no errors, no warnings."""
    result = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=page.encode(), capture_output=True, timeout=60
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0 and output.strip() == "", f"promtool check metrics:\n{output}"


def _parse_openmetrics(page: str) -> Metrics:
    assert page.endswith("# EOF\n"), page[-200:]
    return parse_metrics(page, openmetrics=True)


def _raw_get(url: str, headers: dict[str, str]) -> tuple[httpx.Headers, bytes]:
    """A GET whose body is returned as sent, not decoded (to see the gzip itself)."""
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.status_code
        return response.headers, b"".join(response.iter_raw())


def _type_lines(page: str) -> Counter[str]:
    return Counter(line for line in page.splitlines() if line.startswith(("# TYPE ", "# HELP ")))


# -- 1. promtool, OpenMetrics and gzip on a page with every family --------------------------------


def test_every_family_has_samples_and_promtool_accepts_the_page(busy: Busy) -> None:
    expected = {m.name for m in METRICS} - set(NOT_YET_RECORDED)
    metrics = scrape(busy.gw)
    assert _families_with_samples(metrics) == expected, (
        f"missing: {sorted(expected - _families_with_samples(metrics))}; "
        f"now recorded (drive it in _warm_up, drop it from NOT_YET_RECORDED): "
        f"{sorted(_families_with_samples(metrics) & set(NOT_YET_RECORDED))}"
    )
    assert metrics.value("mcp_gateway_server_stops_total", server_id=REMOTE, reason="manual") == 1
    assert (
        metrics.value("mcp_session_pool_evictions_total", gateway_id=GATEWAY_ID, server_id=REMOTE, reason="manual") == 1
    )
    assert metrics.value("mcp_gateway_errors_total", server_id=DEMO, error_type="tool_error") == 2
    _promtool(metrics.text)


def test_openmetrics_page_has_the_same_series(busy: Busy) -> None:
    response = busy.gw.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200
    assert response.headers["content-type"] == OPENMETRICS
    text = scrape(busy.gw)
    openmetrics = _parse_openmetrics(response.text)
    assert _stable(openmetrics) == _stable(text)
    assert openmetrics.families["target"] == "info"
    counters = {m.name.removesuffix("_total") for m in METRICS if m.kind is Kind.COUNTER} - {
        name.removesuffix("_total") for name in NOT_YET_RECORDED
    }
    assert {name for name, kind in openmetrics.families.items() if kind == "counter"} == counters


def test_gzip_decodes_to_the_same_page(busy: Busy) -> None:
    url = busy.gw.base + "/metrics"
    headers, body = _raw_get(url, {"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"] == TEXT
    plain_headers, plain = _raw_get(url, {"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain_headers
    assert _stable(parse_metrics(gzip.decompress(body).decode())) == _stable(parse_metrics(plain.decode()))


# -- 2. a real Prometheus ------------------------------------------------------------------------


def _requests(server: str) -> str:
    return f'mcp_gateway_requests_total{{server_id="{server}",method="tools/call"}}'


def _by(results: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {item["metric"].get(label, ""): item["value"] for item in results}


@pytest.mark.anyio
async def test_prometheus_scrapes_the_gateway_and_answers_the_catalog_questions(busy: Busy, tmp_path: Path) -> None:
    with run_prometheus(tmp_path, [f"127.0.0.1:{busy.gw.port}"]) as prometheus:
        prometheus.wait_for_value('up{job="mcp-gateway"}', 1)
        # Let Prometheus see the counters before the calls, so the calls are an increase it can rate.
        for server in (DEMO, REMOTE):
            prometheus.wait_for_value(_requests(server), busy.tool_calls[server])
        with anyio.fail_after(60):
            await busy.call(DEMO, "echo", {"text": "p"}, 5)
            await busy.call(REMOTE, "add", {"a": 1, "b": 2}, 3)
        for server in (DEMO, REMOTE):
            prometheus.wait_for_value(_requests(server), busy.tool_calls[server])
        _answers(prometheus)
        [target] = prometheus.targets()
        assert target["health"] == "up" and target["lastError"] == "", target


def _answers(prometheus: Prometheus) -> None:
    rates = _by(prometheus.query("sum by (server_id) (rate(mcp_gateway_requests_total[30s]))"), "server_id")
    assert rates.keys() == {DEMO, REMOTE, SPARE}, rates
    assert rates[DEMO] > 0 and rates[REMOTE] > 0 and rates[SPARE] == 0, rates  # SPARE was never called: 0, not absent

    p95 = _by(
        prometheus.query(
            "histogram_quantile(0.95, sum by (le, server_id) (rate(mcp_gateway_request_duration_seconds_bucket[30s])))"
        ),
        "server_id",
    )
    for server in (DEMO, REMOTE):
        assert 0 < p95[server] < float("inf"), p95

    # The session-pool feature request's questions, verbatim.
    [hit_rate] = prometheus.query(
        "sum(rate(mcp_session_pool_hits_total[5m])) / (sum(rate(mcp_session_pool_hits_total[5m]))"
        " + sum(rate(mcp_session_pool_misses_total[5m])))"
    )
    assert 0 < hit_rate["value"] <= 1, hit_rate
    failures = prometheus.query("sum(rate(mcp_session_pool_health_check_failures_total[5m])) by (gateway_id)")
    assert failures == [{"metric": {"gateway_id": GATEWAY_ID}, "value": 0}], failures  # 0 on a healthy fleet
    active = prometheus.query("mcp_session_pool_active_sessions")
    # Pool gauges exist for every configured server, 0 where nothing is pooled.
    assert {item["metric"]["server_id"] for item in active} == {DEMO, REMOTE, SPARE}, active
    assert {item["metric"]["gateway_id"] for item in active} == {GATEWAY_ID}, active

    [info] = prometheus.query('target_info{service_name="mcp-gateway"}')
    assert info["metric"]["mcp_gateway_id"] == GATEWAY_ID and info["value"] == 1, info


# -- 3. the page's switches ----------------------------------------------------------------------


def test_defaults_text_format_no_scope_labels_no_http_metrics(busy: Busy) -> None:
    response = busy.gw.get("/metrics")
    assert response.headers["content-type"] == TEXT
    metrics = parse_metrics(response.text)
    assert "otel_scope_" not in metrics.text
    assert not [name for name, _ in metrics.samples if name.startswith("http_server_")]


@pytest.mark.anyio
async def test_metrics_token_port_scope_labels_and_http_metrics(gateway_factory: Any) -> None:
    token, metrics_port = "metrics-secret", free_port()
    gw = gateway_factory(
        {DEMO: demo_server(lazy=False)},
        {"auth": {"metrics_token": token}},
        extra={"telemetry": {"metrics_port": metrics_port, "scope_labels": True, "http_metrics": True}},
    )
    bearer = {"Authorization": f"Bearer {token}"}
    side_port = f"http://127.0.0.1:{metrics_port}/metrics"

    # The token guards /metrics, on both ports, and nothing else.
    assert gw.get("/metrics").status_code == 401
    assert gw.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (await eventually(lambda: _get(side_port), what="the metrics port")).status_code == 401
    with anyio.fail_after(60):
        async with mcp_session(gw.url(DEMO)) as session:
            result = await session.call_tool("echo", {"text": "open"})
    assert not result.is_error
    assert gw.get("/servers").status_code == 200
    assert gw.get("/no-such-route/demo").status_code == 404  # unmatched paths must not become labels either

    main = parse_metrics(
        await eventually(lambda: _http_metrics_page(gw.get("/metrics", headers=bearer)), what="HTTP metrics")
    )
    side = await anyio.to_thread.run_sync(functools.partial(httpx.get, side_port, headers=bearer, timeout=30))
    assert side.status_code == 200 and side.headers["content-type"] == TEXT
    assert parse_metrics(side.text).total("mcp_gateway_requests_total", server_id=DEMO, method="tools/call") == 1

    # Scope labels on every series but target_info.
    for name, labels in main.samples:
        if name != "target_info":
            assert "otel_scope_name" in dict(labels), (name, labels)
    assert main.label_values("mcp_gateway_requests_total", "otel_scope_name") == {"mcp-gateway"}

    # HTTP server metrics by route template, never by raw path.
    assert "/servers/{server_id}/mcp" in main.label_values("http_server_request_duration_seconds_count", "http_route")
    raw = {
        value for (_, labels) in main.samples for _, value in labels if "/servers/demo" in value or "no-such" in value
    }
    assert raw == set(), raw
    assert token not in gw.log()
    _promtool(main.text)


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=30)
    except httpx.ConnectError:
        return None


def _http_metrics_page(response: httpx.Response) -> str | None:
    assert response.status_code == 200, response.text
    return response.text if "http_server_request_duration_seconds_count" in response.text else None


# -- 4. the exporter's duplicate-family bug --------------------------------------------------------


@pytest.mark.parametrize("accept", ["text/plain", "application/openmetrics-text"])
def test_back_to_back_scrapes_repeat_no_family(busy: Busy, accept: str) -> None:
    parse = _parse_openmetrics if "openmetrics" in accept else parse_metrics
    for _ in range(2):
        page = busy.gw.get("/metrics", headers={"Accept": accept}).text
        parse(page)  # asserts no series twice
        repeated = {line: n for line, n in _type_lines(page).items() if n > 1}
        assert repeated == {}, repeated
