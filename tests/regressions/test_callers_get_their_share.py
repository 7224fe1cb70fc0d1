"""One caller cannot take every client session, or every slot of a shared stdio server (F12, F13).

With `max_sessions: 20`, one token holder opened 20 sessions and every other identity got 503 for
an hour. On a shared stdio server, identity A holding 64 slow calls made identity B's one call fail
after 10 s (`pool_exhausted`). By default each configured token now gets an equal share of both
(never less than a quarter): a caller over its share is refused (429) or waits for its own calls,
and the others are served. Each refusal is counted by reason.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
import pytest

from tests.support.mcp import rpc
from tests.support.metrics import scrape
from tests.support.processes import Gateway, misbehaving_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

TOKENS = ["token-a", "token-b"]
A, B = ({"Authorization": f"Bearer {token}"} for token in TOKENS)


def _initialize(gw: Gateway, headers: dict[str, str]) -> Any:
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    message = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    return rpc(gw, "/servers/bad/mcp", message, **headers)


def test_a_caller_holds_at_most_its_share_of_sessions(gateway_factory: Any) -> None:
    auth = {"auth": {"tokens": TOKENS}, "limits": {"max_sessions": 4}}  # 2 each by default
    gw = gateway_factory({"bad": misbehaving_server()}, auth)
    assert [_initialize(gw, A).status_code for _ in range(2)] == [200, 200]
    refused = _initialize(gw, A)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["data"] == {"reason": "identity_sessions", "limit": 2}, error
    assert "this caller holds its maximum of 2 client sessions" in error["message"]
    assert [_initialize(gw, B).status_code for _ in range(2)] == [200, 200]  # B is still served
    assert _initialize(gw, B).status_code == 429
    metrics = scrape(gw, Authorization=A["Authorization"])
    assert metrics.value("mcp_gateway_rejections_total", server_id="bad", reason="identity_sessions") == 2


async def test_a_caller_waits_for_its_own_slots_on_a_shared_server(gateway_factory: Any) -> None:
    bad = misbehaving_server(
        request_timeout=60,
        pool={"max_requests_per_session": 4, "acquire_timeout": 1},  # 2 slots each
    )
    gw = gateway_factory({"bad": bad}, {"auth": {"tokens": TOKENS}})
    sessions = {name: _initialize(gw, headers).headers["mcp-session-id"] for name, headers in (("a", A), ("b", B))}

    def call(who: str, tool: str, request_id: int) -> dict[str, Any]:
        message = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": {}},
        }
        headers = A if who == "a" else B
        response = rpc(gw, "/servers/bad/mcp", message, sessions[who], **headers)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async with anyio.create_task_group() as group:
        for n in range(2):  # A's two slow calls: its whole share
            group.start_soon(anyio.to_thread.run_sync, call, "a", "hang", 100 + n)
        await eventually(lambda: gw.server("bad")["in_flight"] == 2, what="A's two calls in flight")
        third = await anyio.to_thread.run_sync(call, "a", "echo", 3)
        assert third["error"]["data"]["reason"] == "identity_share", third  # A waits for its own, then gives up
        other = await anyio.to_thread.run_sync(call, "b", "cancelled", 4)
        assert "result" in other, other  # B is served at once, beside A's two slow calls
        gw.post("/servers/bad/restart")  # ends A's hung calls
        group.cancel_scope.cancel()

    metrics = scrape(gw, Authorization=A["Authorization"])
    assert metrics.value("mcp_gateway_rejections_total", server_id="bad", reason="identity_share") == 1
