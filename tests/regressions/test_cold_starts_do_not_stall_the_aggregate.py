"""/mcp's initialize and lists never wait on a cold start past `limits.cold_start_wait` (F11).

One lazy server that never answered `initialize` stalled every `/mcp` initialize and tools/list
for its whole start timeout (30 s by default), again after each breaker cooldown: the healthy
servers were hidden behind it. Now a server still starting after the wait is left out of that
answer (logged and counted) and keeps starting; when it comes up, the caller's /mcp sessions are
told the lists changed.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.mcp import raw_initialize, rpc
from tests.support.metrics import scrape
from tests.support.processes import Gateway, demo_server, misbehaving_server

WAIT = {"limits": {"cold_start_wait": 0.5}}


def _tool_names(gw: Gateway, session_id: str) -> set[str]:
    response = rpc(gw, "/mcp", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session_id)
    assert response.status_code == 200, response.text
    return {tool["name"] for tool in response.json()["result"]["tools"]}


def test_a_server_that_never_starts_is_left_out_while_it_starts(gateway_factory: Any) -> None:
    never = misbehaving_server(start_timeout=30, env={"MISBEHAVING_INIT_DELAY": "inf"})
    gw = gateway_factory({"demo": demo_server(lazy=False), "never": never}, WAIT)

    session_id = raw_initialize(gw, "/mcp")
    names = _tool_names(gw, session_id)
    assert "demo__echo" in names and not any(name.startswith("never__") for name in names)
    # Answered while the slow server is still starting: the gateway did not wait out its 30 s.
    assert gw.server("never")["state"] == "starting"

    metrics = scrape(gw)
    assert metrics.value("mcp_gateway_aggregate_omissions_total", server_id="never", reason="starting") == 2
    assert metrics.value("mcp_gateway_aggregate_omissions_total", server_id="demo", reason="starting") == 0
    assert "server never is still starting: left out of this answer" in gw.log()


def test_a_slow_start_is_announced_when_it_is_up(gateway_factory: Any) -> None:
    slow = misbehaving_server(env={"MISBEHAVING_INIT_DELAY": "2"})
    gw = gateway_factory({"demo": demo_server(lazy=False), "slow": slow}, WAIT)
    session_id = raw_initialize(gw, "/mcp")
    headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25", "Accept": "text/event-stream"}
    with httpx.stream("GET", gw.url(), headers=headers, timeout=30) as stream:
        assert stream.status_code == 200  # the GET stream is open before the list
        assert not any(name.startswith("slow__") for name in _tool_names(gw, session_id))
        announced = []
        for line in stream.iter_lines():
            if line.startswith("data:"):
                announced.append(json.loads(line[5:])["method"])
                if "notifications/tools/list_changed" in announced:
                    break
    assert "slow__echo" in _tool_names(gw, session_id)
