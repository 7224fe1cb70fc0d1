"""OTLP push end to end: gateway -> rotel (a real OTLP collector) -> a recording OTLP/HTTP sink.

The gateway exports with the protocol the standard variables ask for (OTLP/HTTP or gRPC) to
rotel-agent, which forwards over OTLP/HTTP to `OtlpSink`. What arrives must be what `/metrics`
shows: the same instruments, attributes and values, under the resource the variables describe.
Every endpoint is on 127.0.0.1, and rotel runs with no ROTEL_* settings but the command line's.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.resources
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from telemetry.catalog import BY_NAME, Kind, Metric
from telemetry.settings import otlp_from_env
from tests.support.mcp import mcp_session
from tests.support.metrics import Metrics, scrape
from tests.support.processes import Gateway, demo_server, free_port
from tests.support.waiting import eventually, wait_for
from tests.telemetry.otlp_sink import Attributes, HistogramValue, OtlpSink

# The collector binary the `rotel` wheel ships beside its Python wrapper (`rotel.agent.Agent.agent_path`).
ROTEL_AGENT = importlib.resources.files("rotel") / "rotel-agent"
PROTOCOLS = ["http/protobuf", "grpc"]
SERVICE_NAME = "mcp-gateway-otlp-test"

# Counters and histograms that no longer move once the test's traffic has stopped.
STABLE = [
    BY_NAME[name]
    for name in (
        "mcp_gateway_requests_total",
        "mcp_server_tools_called_total",
        "mcp_gateway_errors_total",
        "mcp_session_pool_hits_total",
        "mcp_session_pool_misses_total",
        "mcp_gateway_server_starts_total",
        "mcp_gateway_request_duration_seconds",
        "mcp_server_operation_duration_seconds",
        "mcp_client_operation_duration_seconds",
    )
]


@pytest.fixture(autouse=True)
def _no_ambient_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway inherits this environment: only what a test sets may steer its exporter."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as started:
        yield started


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@dataclass
class Rotel:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log_path: Path

    def endpoint(self, protocol: str) -> str:
        """What OTEL_EXPORTER_OTLP_METRICS_ENDPOINT should say to reach this agent with `protocol`."""
        if protocol == "grpc":
            return f"http://127.0.0.1:{self.grpc_port}"
        return f"http://127.0.0.1:{self.http_port}/v1/metrics"


def rotel_command(grpc_port: int, http_port: int, forward_to: str) -> list[str]:
    """rotel-agent in the foreground: both OTLP receivers on loopback, metrics forwarded by OTLP/HTTP."""
    return [
        str(ROTEL_AGENT),
        "start",
        "--otlp-grpc-endpoint",
        f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint",
        f"127.0.0.1:{http_port}",
        "--otlp-receiver-traces-disabled",
        "--otlp-receiver-logs-disabled",
        "--exporter",
        "otlp",
        "--otlp-exporter-endpoint",
        forward_to,
        "--otlp-exporter-protocol",
        "http",
        "--batch-timeout",
        "50ms",  # forward within 50 ms of receiving (default 200 ms)
    ]


@pytest.fixture
def rotel(sink: OtlpSink, tmp_path: Path) -> Iterator[Rotel]:
    """rotel-agent forwarding to `sink`. Tests ask for it before `gateway_factory`, so it outlives the gateway."""
    grpc_port, http_port = free_port(), free_port()
    log_path = tmp_path / "rotel.log"
    # A clean environment: no ROTEL_* variable can add an exporter, internal telemetry or a far endpoint.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            rotel_command(grpc_port, http_port, sink.endpoint), stdout=log, stderr=subprocess.STDOUT, env=env
        )
    agent = Rotel(proc, grpc_port, http_port, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"rotel-agent exited with {proc.returncode}:\n{log_path.read_text()}")
        return _listening(grpc_port) and _listening(http_port)

    try:
        wait_for(ready, 20, "rotel-agent to listen")
        yield agent
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def otlp_env(agent: Rotel, protocol: str, interval_ms: int) -> dict[str, str]:
    return {
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": agent.endpoint(protocol),
        "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
        "OTEL_SERVICE_NAME": SERVICE_NAME,
        # A replica names itself (Kubernetes: the pod's name through the downward API).
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.instance.id=replica-a",
    }


async def _call(gw: Gateway, calls: list[tuple[str, dict[str, Any]]]) -> None:
    with anyio.fail_after(60):
        async with mcp_session(gw.url("demo")) as session:
            for tool, arguments in calls:
                await session.call_tool(tool, arguments)


def _prom_attrs(attrs: Attributes) -> Attributes:
    """OTLP attribute keys as Prometheus label names (`mcp.method.name` -> `mcp_method_name`)."""
    return frozenset((key.replace(".", "_"), value) for key, value in attrs)


def prometheus_view(page: Metrics, metric: Metric) -> dict[Attributes, float | HistogramValue]:
    """One catalog metric as `/metrics` shows it, shaped like `OtlpSink.latest`."""
    if metric.kind is not Kind.HISTOGRAM:
        return {labels: value for (name, labels), value in page.samples.items() if name == metric.name}
    counts = {labels: value for (name, labels), value in page.samples.items() if name == f"{metric.name}_count"}
    return {
        labels: HistogramValue(int(count), page.samples[(f"{metric.name}_sum", labels)])
        for labels, count in counts.items()
    }


def otlp_view(sink: OtlpSink, metric: Metric) -> dict[Attributes, float | HistogramValue]:
    return {_prom_attrs(attrs): value for attrs, value in sink.latest(metric.instrument).items()}


def _same(a: float | HistogramValue, b: float | HistogramValue) -> bool:
    if isinstance(a, HistogramValue) and isinstance(b, HistogramValue):
        return a.count == b.count and a.sum == pytest.approx(b.sum, rel=1e-9)
    return a == b


def differences(page: Metrics, sink: OtlpSink) -> list[str]:
    """Where what arrived by OTLP differs from `/metrics`, one line per series; [] when they agree."""
    found = []
    for metric in STABLE:
        prom, otlp = prometheus_view(page, metric), otlp_view(sink, metric)
        for labels in prom.keys() | otlp.keys():
            a, b = prom.get(labels), otlp.get(labels)
            if a is None or b is None or not _same(a, b):
                found.append(f"{metric.instrument} {dict(labels)}: /metrics {a}, OTLP {b}")
    return found


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_otlp_push_matches_metrics_page(
    protocol: str, rotel: Rotel, sink: OtlpSink, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory({"demo": demo_server()}, env=otlp_env(rotel, protocol, 500))
    calls = [("echo", {"text": "x"})] * 4 + [("add", {"a": 1, "b": 2})] * 2 + [("fail", {"message": "no"})]
    await _call(gw, calls)

    tools_call = {"server_id": "demo", "method": "tools/call"}
    await eventually(lambda: sink.value("mcp_gateway_requests", tools_call) == 7, 30, "7 tools/call requests over OTLP")

    # The two readers collect at different moments: poll until they agree; on timeout, show what still differs.
    last: list[str] = []

    def agree() -> bool:
        last[:] = differences(scrape(gw), sink)
        return not last

    try:
        await eventually(agree, 15, "OTLP to agree with /metrics")
    except AssertionError:
        raise AssertionError("OTLP and /metrics disagree:\n" + "\n".join(last)) from None
    assert sink.rejected == []

    # ... and they agree on the right numbers, not just with each other.
    def tool(name: str) -> float | HistogramValue | None:
        return sink.value("mcp_server_tools_called", {"server_id": "demo", "tool_name": name})

    assert (tool("echo"), tool("add"), tool("fail")) == (4, 2, 1)
    assert sink.value("mcp_gateway_errors", {"server_id": "demo", "error_type": "tool_error"}) == 1
    duration = sink.value("mcp_gateway_request_duration", tools_call)
    assert isinstance(duration, HistogramValue) and duration.count == 7
    served = sink.latest("mcp.server.operation.duration")
    calls_served = {a: v for a, v in served.items() if ("mcp.method.name", "tools/call") in a}
    assert sum(v.count for v in calls_served.values() if isinstance(v, HistogramValue)) == 7
    pool = otlp_view(sink, BY_NAME["mcp_session_pool_hits_total"]) | otlp_view(
        sink, BY_NAME["mcp_session_pool_misses_total"]
    )
    assert pool, "no session pool counters arrived"

    # One resource: the standard variables' service name and attributes, and the same as target_info.
    resources = sink.resources()
    assert len(resources) == 1, resources
    resource = resources[0]
    assert resource["service.name"] == SERVICE_NAME
    assert resource["deployment.environment"] == "test"
    assert resource["mcp_gateway.id"] == "test-gw"
    assert resource["service.instance.id"] == "replica-a"
    target_info = [dict(labels) for (name, labels) in scrape(gw).samples if name == "target_info"]
    assert target_info == [dict(_prom_attrs(frozenset(resource.items())))]


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_sigterm_flushes_what_was_not_pushed(
    protocol: str, rotel: Rotel, sink: OtlpSink, gateway_factory: Callable[..., Gateway]
) -> None:
    # A minute between pushes: only the flush on shutdown can deliver these calls within the test.
    gw = gateway_factory({"demo": demo_server()}, env=otlp_env(rotel, protocol, 60_000))
    await _call(gw, [("echo", {"text": "last words"})] * 3)
    assert sink.latest("mcp_gateway_requests") == {}

    gw.stop()  # uvicorn re-raises SIGTERM once shut down: the exit status is -15, by design
    tools_call = {"server_id": "demo", "method": "tools/call"}
    await eventually(lambda: sink.value("mcp_gateway_requests", tools_call) == 3, 20, "the shutdown flush to arrive")
    assert sink.value("mcp_server_tools_called", {"server_id": "demo", "tool_name": "echo"}) == 3


def _never(condition: Callable[[], Any], seconds: float) -> bool:
    """True when `condition` stays falsy for `seconds` of polling."""
    try:
        wait_for(condition, seconds)
    except AssertionError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.anyio
async def test_no_otlp_without_the_variables(gateway_factory: Callable[..., Gateway]) -> None:
    # The sink listens where an exporter left at its defaults would push (localhost:4318), and the
    # interval variable, which asks for no exporter by itself, would make such a push quick.
    def on_default_port() -> OtlpSink | None:
        with contextlib.suppress(OSError):
            return OtlpSink(port=4318)
        return None  # taken, perhaps by this very test in a concurrent run: wait for it

    with await eventually(on_default_port, 30, "port 4318 (the OTLP/HTTP default) to be free") as sink:
        gw = gateway_factory({"demo": demo_server()}, env={"OTEL_METRIC_EXPORT_INTERVAL": "100"})
        await _call(gw, [("echo", {"text": "x"})])
        assert _never(lambda: sink.requests, 1.5), "the gateway pushed OTLP although nothing asked it to"
        assert scrape(gw).value("mcp_gateway_requests_total", server_id="demo", method="tools/call") == 1
        assert "OTLP metrics push on" not in gw.log()


@pytest.mark.parametrize(
    ("env", "protocol", "interval"),
    [
        ({}, None, None),
        ({"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_METRIC_EXPORT_INTERVAL": "100"}, None, None),
        ({"OTEL_METRICS_EXPORTER": "console,otlp"}, "http/protobuf", 60.0),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, "http/protobuf", 60.0),
        (
            {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "grpc",
            60.0,
        ),
        ({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_METRIC_EXPORT_INTERVAL": "500"}, "http/protobuf", 0.5),
    ],
)
def test_which_variables_turn_otlp_on(env: dict[str, str], protocol: str | None, interval: float | None) -> None:
    otlp = otlp_from_env(env)
    assert (otlp and otlp.protocol, otlp and otlp.interval_seconds) == (protocol, interval)


def test_sink_takes_gzip_and_rejects_other_paths(sink: OtlpSink) -> None:
    request = ExportMetricsServiceRequest()
    request.resource_metrics.add().scope_metrics.add().metrics.add(name="m").sum.data_points.add(as_int=3)
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    body = gzip.compress(request.SerializeToString())
    assert httpx.post(f"{sink.endpoint}/v1/metrics", content=body, headers=headers).status_code == 200
    assert httpx.post(f"{sink.endpoint}/v1/traces", content=body, headers=headers).status_code == 404
    assert sink.names() == {"m"} and sink.rejected == ["POST /v1/traces"]
