"""The page renderer on its own: format, escaping, OpenMetrics, gzip, and no duplicate families."""

from __future__ import annotations

import gc
import gzip
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from gateway.events import RequestRecord
from telemetry.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, family_name, render
from telemetry.provider import Pipeline, build_pipeline
from telemetry.recorder import PoolSample, Recorder, ServerSample
from telemetry.settings import TelemetrySettings
from tests.support.metrics import parse_metrics

pytestmark = pytest.mark.fast


class _Fleet:
    def server_samples(self) -> Iterable[ServerSample]:
        return [ServerSample("demo", True, None, 12.5, 1), ServerSample("idle", False, None, None, 0)]

    def pool_samples(self) -> Iterable[PoolSample]:
        return [PoolSample("demo", 1, 2)]

    def tasks(self) -> int | None:
        return 7


def _request(server: str, method: str, target: str | None, duration: float, error: str | None) -> RequestRecord:
    return RequestRecord(
        server_id=server,
        method=method,
        target=target,
        duration=duration,
        error_type=error,
        upstream_duration=0.001,
        protocol_version="2025-11-25",
        upstream_transport="stdio",
    )


def _pipeline(limit: int = 2000) -> tuple[Pipeline, Recorder]:
    settings = TelemetrySettings(gateway_id='gw "one"', cardinality_limit=limit)
    pipeline = build_pipeline(settings)
    recorder = Recorder(pipeline.provider.get_meter("test"), settings)
    recorder.watch(_Fleet())
    recorder.tools_listed("demo", ["echo", 'we"ird\\name'], first_page=True)
    recorder.request_finished(_request("demo", "tools/call", "echo", 0.02, None))
    recorder.request_finished(_request("demo", "tools/call", 'we"ird\\name', 0.02, "tool_error"))
    recorder.request_finished(_request("demo", "bogus/method", None, 0.5, "upstream_error"))
    recorder.pool_event("demo", "hit")
    recorder.server_started("demo", 0.3)
    recorder.server_stopped("demo", "crash")
    return pipeline, recorder


def _type_lines(text: str) -> Counter[str]:
    return Counter(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE"))


def test_text_page_parses_with_exact_names_and_escaped_labels() -> None:
    pipeline, _ = _pipeline()
    body, headers = render(pipeline.prometheus)
    assert headers["Content-Type"] == TEXT_CONTENT_TYPE
    metrics = parse_metrics(body.decode())
    assert metrics.value("mcp_gateway_requests_total", server_id="demo", method="tools/call") == 2
    assert metrics.value("mcp_gateway_requests_total", server_id="demo", method="other") == 1  # not an MCP method
    assert metrics.value("mcp_server_tools_called_total", server_id="demo", tool_name='we"ird\\name') == 1
    assert metrics.value("mcp_session_pool_hits_total", gateway_id='gw "one"', server_id="demo") == 1
    assert metrics.value("mcp_session_pool_active_sessions", gateway_id='gw "one"', server_id="demo") == 1
    assert metrics.value("mcp_gateway_active_servers") == 1
    assert metrics.value("mcp_server_uptime_seconds", server_id="demo") == 12.5
    assert metrics.value("mcp_server_uptime_seconds", server_id="idle") is None
    assert metrics.value("mcp_gateway_request_duration_seconds_bucket", server_id="demo", method="other", le="0.5") == 1
    assert (
        metrics.value("mcp_gateway_request_duration_seconds_bucket", server_id="demo", method="other", le="+Inf") == 1
    )
    assert "otel_scope_name" not in body.decode()
    info = metrics.value("target_info", **_target_labels(metrics))
    assert info == 1


def _target_labels(metrics: object) -> dict[str, str]:
    text = metrics.text  # type: ignore[attr-defined]
    line = next(line for line in text.splitlines() if line.startswith("target_info{"))
    parsed = parse_metrics(f"# TYPE target_info gauge\n{line}\n")
    ((_, labels),) = parsed.samples
    assert dict(labels)["service_name"] == "mcp-gateway"
    return dict(labels)


def test_openmetrics_page() -> None:
    pipeline, _ = _pipeline()
    body, headers = render(pipeline.prometheus, openmetrics=True)
    text = body.decode()
    assert headers["Content-Type"] == OPENMETRICS_CONTENT_TYPE
    assert text.endswith("# EOF\n")
    assert "# TYPE mcp_gateway_requests counter" in text
    assert 'mcp_gateway_requests_total{server_id="demo",method="tools/call"} 2' in text
    assert "# TYPE target info" in text


def test_gzip_when_accepted() -> None:
    pipeline, _ = _pipeline()
    plain, _ = render(pipeline.prometheus)
    zipped, headers = render(pipeline.prometheus, gzipped=True)
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped) == plain


def test_a_provider_wide_flush_never_duplicates_families() -> None:
    """The stock exporter repeated whole families on the scrape after force_flush(); this reader must not."""
    pipeline, _ = _pipeline()
    pipeline.provider.force_flush()
    for _ in range(2):
        body, _ = render(pipeline.prometheus)
        repeated = {name: n for name, n in _type_lines(body.decode()).items() if n > 1}
        assert repeated == {}
        parse_metrics(body.decode())  # also fails on any duplicate series
    pipeline.shutdown()


def test_cardinality_limit_folds_new_tools_into_other() -> None:
    pipeline, recorder = _pipeline(limit=3)
    recorder.tools_listed("demo", [f"tool-{n}" for n in range(10)], first_page=True)
    for n in range(10):
        recorder.request_finished(_request("demo", "tools/call", f"tool-{n}", 0.01, None))
    metrics = parse_metrics(render(pipeline.prometheus)[0].decode())
    tools = metrics.label_values("mcp_server_tools_called_total", "tool_name")
    assert len(tools) <= 4 and "other" in tools
    assert metrics.total("mcp_server_tools_called_total", server_id="demo") == 12


def test_family_names() -> None:
    assert family_name("mcp_gateway_requests", "", True) == "mcp_gateway_requests_total"
    assert family_name("http.server.request.duration", "s", False) == "http_server_request_duration_seconds"
    assert family_name("some.bytes", "By", False) == "some_bytes"
    assert family_name("queue.depth", "{item}", False) == "queue_depth"


def test_render_holds_garbage_collection_off_only_while_it_runs() -> None:
    pipeline, _ = _pipeline()
    seen: list[bool] = []
    pipeline.provider.get_meter("probe").create_observable_gauge("probe", [lambda options: _note(seen, gc.isenabled())])
    render(pipeline.prometheus)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        render(pipeline.prometheus)
        assert not gc.isenabled()  # an application's own choice is left as it was
    finally:
        gc.enable()


def _note(seen: list[bool], value: bool) -> list[Any]:
    """A gauge callback that only records what it saw (no observations)."""
    seen.append(value)
    return []
