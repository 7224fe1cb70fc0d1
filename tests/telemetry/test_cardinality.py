"""Label values are bounded by construction: no client input can grow the number of series."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import misbehaving_server, raw_initialize, scrape

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
