"""Talking MCP to a gateway: the official client, and raw JSON-RPC POSTs for tests of exactly what goes
over the wire.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support.processes import Gateway


@contextlib.asynccontextmanager
async def mcp_session(
    url: str, headers: dict[str, str] | None = None, transport: Any = None, **callbacks: Any
) -> AsyncIterator[ClientSession]:
    """The official MCP client, initialized against `url`; `callbacks` go to `ClientSession`.

    `transport` (an httpx2 transport) stands between the client and the network, e.g. a balancer.
    """
    import httpx2

    client = httpx2.AsyncClient(headers=headers or {}, transport=transport, timeout=httpx2.Timeout(30.0, read=120.0))
    async with (
        client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write, **callbacks) as session,
    ):
        await session.initialize()
        yield session


def rpc(gw: Gateway, path: str, message: Any, session_id: str | None = None, **headers: str) -> httpx.Response:
    """One raw JSON-RPC POST, for tests of exactly what goes over the wire."""
    all_headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **headers}
    if session_id:
        all_headers["Mcp-Session-Id"] = session_id
        all_headers.setdefault("MCP-Protocol-Version", "2025-11-25")
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return gw.post(path, content=body, headers=all_headers)


def error_message(response: httpx.Response) -> str:
    """The message of an error answer: MCP endpoints send JSON-RPC errors, other routes {"error": ...}."""
    error = response.json()["error"]
    return str(error["message"] if isinstance(error, dict) else error)


def raw_initialize(gw: Gateway, path: str, version: str = "2025-11-25") -> str:
    response = rpc(
        gw,
        path,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
        },
    )
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    rpc(gw, path, initialized, session_id, **{"MCP-Protocol-Version": version})
    return session_id


async def call_outcome(call: Awaitable[Any], outcome: dict[str, Any]) -> None:
    try:
        outcome["result"] = await call
    except MCPError as exc:
        outcome["error"] = exc


def initialize_error(gw: Gateway, server: str) -> dict[str, Any]:
    """The JSON-RPC error of a raw initialize on one server's endpoint, which must fail."""
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    response = rpc(gw, f"/servers/{server}/mcp", {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
    assert response.status_code == 200, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


SLEEP_ID = 7


async def while_sleeping(gw: Gateway, calls: list[tuple[str, str]], check: Callable[[], Awaitable[None]]) -> None:
    """Run `check` while `sleep` calls are in flight, then cancel them with `notifications/cancelled`.

    `calls` are (endpoint path, tool name) pairs, each on a client session of its own (the gateway's
    first token: A's). Raw HTTP rather than the SDK client: an SDK session that exits while the
    answer to a request it cancelled is on its way fails in its own teardown.
    """
    opened = [(path, raw_initialize(gw, path), tool) for path, tool in calls]
    answers: list[dict[str, Any]] = []

    def sleep(path: str, session_id: str, tool: str) -> None:
        call = {"name": tool, "arguments": {"seconds": 60}}
        response = rpc(gw, path, {"jsonrpc": "2.0", "id": SLEEP_ID, "method": "tools/call", "params": call}, session_id)
        assert response.status_code == 200, response.text
        answers.append(answer(response))

    async with anyio.create_task_group() as group:
        for path, session_id, tool in opened:
            group.start_soon(anyio.to_thread.run_sync, sleep, path, session_id, tool)
        await check()
        for path, session_id, _ in opened:
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": SLEEP_ID}}
            assert rpc(gw, path, cancel, session_id).status_code == 202
    assert [answer["error"]["data"]["reason"] for answer in answers] == ["cancelled"] * len(calls), answers


def answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a POST, sent as JSON or as the last event of an SSE stream."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        answer: dict[str, Any] = json.loads(data[-1])
    else:
        answer = response.json()
    return answer
