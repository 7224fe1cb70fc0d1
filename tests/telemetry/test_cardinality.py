"""Label values are bounded by construction: no client input can grow the number of series."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import anyio
import httpx
import pytest

from gateway.events import RequestRecord
from telemetry.exposition import render
from telemetry.provider import build_pipeline
from telemetry.recorder import Recorder
from telemetry.settings import TelemetrySettings
from tests.support.mcp import raw_initialize
from tests.support.metrics import Metrics, parse_metrics, scrape
from tests.support.processes import demo_server, misbehaving_server

pytestmark = pytest.mark.anyio

CALLS = 10_000


async def test_ten_thousand_random_tool_names_add_at_most_one_series(gateway_factory: Any) -> None:
    gw = gateway_factory({"odd": misbehaving_server(lazy=False)})
    session_id = raw_initialize(gw, "/mcp")
    before = scrape(gw)
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": "2025-11-25",
    }
    answered = 0

    async def worker(client: httpx.AsyncClient, start: int) -> None:
        nonlocal answered
        for n in range(start, CALLS, 8):
            name = f"odd__random-{n}" if n % 2 else f"random-{n}"  # routed to odd, or unknown to the gateway
            body = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": name, "arguments": {}}}
            response = await client.post(gw.url(), content=json.dumps(body), headers=headers)
            assert response.status_code == 200 and response.json()["id"] == n
            answered += 1

    with anyio.fail_after(300):
        async with httpx.AsyncClient(timeout=30) as client, anyio.create_task_group() as group:
            for start in range(8):
                group.start_soon(worker, client, start)
    assert answered == CALLS

    after = scrape(gw)
    new_series = set(after.samples) - set(before.samples)
    tool_series = {key for key in new_series if key[0] == "mcp_server_tools_called_total"}
    assert tool_series == {
        ("mcp_server_tools_called_total", frozenset({("server_id", "odd"), ("tool_name", "unknown")}))
    }
    assert after.value("mcp_server_tools_called_total", server_id="odd", tool_name="unknown") == CALLS / 2
    # No label anywhere carries a client-chosen name.
    assert "random-" not in after.text
    # Every label set on the page is few: at most the servers x methods x error types the catalog allows.
    assert len(after.samples) < 1000, len(after.samples)


PROMPTS = 500
OPERATIONS = ("mcp_server_operation_duration_seconds_count", "mcp_client_operation_duration_seconds_count")


def _prompt_labels(metrics: Metrics) -> Counter[str]:
    """The gen_ai_prompt_name values of the semantic-convention histograms, with their count of series."""
    return Counter(
        dict(labels)["gen_ai_prompt_name"]
        for name, labels in metrics.samples
        if name in OPERATIONS and "gen_ai_prompt_name" in dict(labels)
    )


async def test_random_prompt_names_add_no_series(gateway_factory: Any) -> None:
    """prompts/get names come from the client; only the ones the server answers become label values."""
    gw = gateway_factory({"demo": demo_server(lazy=False)})
    session_id = raw_initialize(gw, "/servers/demo/mcp")
    headers = {
        "Accept": "application/json, text/event-stream",
        "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": "2025-11-25",
    }
    names = [f"random-prompt-{n}" for n in range(PROMPTS)] + ["greet"]
    with anyio.fail_after(120):
        async with httpx.AsyncClient(timeout=30) as client:
            for n, name in enumerate(names):
                params = {"name": name, "arguments": {"name": "Ada"}}
                body = {"jsonrpc": "2.0", "id": n, "method": "prompts/get", "params": params}
                response = await client.post(gw.url("demo"), json=body, headers=headers)
                assert response.status_code == 200 and response.json()["id"] == n, response.text
                assert ("error" in response.json()) == (name != "greet"), response.text

    metrics = scrape(gw)
    # Two histograms (gateway side, upstream side), one series each per prompt label.
    assert _prompt_labels(metrics) == {"unknown": 2, "greet": 2}
    assert "random-prompt" not in metrics.text


def test_prompts_past_the_cardinality_limit_fold_into_other() -> None:
    """A server that answers any prompt name cannot grow the series past `cardinality_limit`."""
    settings = TelemetrySettings(gateway_id="gw", cardinality_limit=3)
    pipeline = build_pipeline(settings)
    recorder = Recorder(pipeline.provider.get_meter("test"), settings)
    for n in range(10):
        facts = RequestRecord(
            server_id="any",
            method="prompts/get",
            target=f"prompt-{n}",
            duration=0.01,
            error_type=None,
            upstream_duration=0.005,
            protocol_version="2025-11-25",
            upstream_transport="stdio",
        )
        recorder.request_finished(facts)
    recorder.request_finished(
        RequestRecord(
            server_id="any",
            method="prompts/get",
            target="prompt-0",
            duration=0.01,
            error_type=None,
            upstream_duration=0.005,
            protocol_version="2025-11-25",
            upstream_transport="stdio",
        )
    )
    body, _ = render(pipeline.prometheus)
    counts = {
        dict(labels)["gen_ai_prompt_name"]: value
        for (name, labels), value in parse_metrics(body.decode()).samples.items()
        if name == OPERATIONS[0]
    }
    assert counts == {"prompt-0": 2, "prompt-1": 1, "prompt-2": 1, "other": 7}
