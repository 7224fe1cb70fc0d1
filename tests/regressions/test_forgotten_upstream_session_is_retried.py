"""A call on an upstream session the server forgot is sent once more, on a new session.

A streamable-HTTP server that restarts or expires a session answers HTTP 404 to its id, and has
not processed the request. The gateway used to fail that call (`transport` error) and only the
client's next call got a new session; now the pool drops the forgotten session and the same
call runs on a new one, so the client never sees the upstream's restart.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from tests.support.mcp import mcp_session
from tests.support.metrics import scrape
from tests.support.processes import Upstream

pytestmark = pytest.mark.anyio


def _forget(upstream: Upstream, session_id: str) -> None:
    """End `session_id` at the upstream behind the gateway's back, as a restart or an expiry would."""
    headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
    assert httpx.delete(upstream.url, headers=headers, timeout=10).status_code == 200


async def test_the_call_runs_once_on_a_new_session(gateway_factory: Any, http_upstream: Upstream) -> None:
    gw = gateway_factory({"remote": {"url": http_upstream.url, "protocol": "2025"}})  # a 2025 session to forget
    with anyio.fail_after(60):
        async with mcp_session(gw.url("remote")) as client:
            first = json.loads((await client.call_tool("whoami", {})).content[0].text)  # type: ignore[union-attr]
            _forget(http_upstream, first["session_id"])

            result = await client.call_tool("whoami", {})
            assert not result.is_error, result
            second = json.loads(result.content[0].text)  # type: ignore[union-attr]
            assert second["session_id"] != first["session_id"]
            assert second["calls"] == 1  # sent once on the new session, never twice

    metrics = scrape(gw)
    calls = {"server_id": "remote", "method": "tools/call"}
    assert metrics.total("mcp_gateway_requests_total", **calls) == 2
    assert metrics.total("mcp_gateway_errors_total", server_id="remote") == 0
    assert metrics.total("mcp_session_pool_evictions_total", server_id="remote", reason="upstream_closed") == 1
    assert "Traceback" not in gw.log()
