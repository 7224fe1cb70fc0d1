"""Bearer-token auth: every MCP and operations route but the probes needs a configured token.

One gateway with two tokens serves the module. A session belongs to the token that created it, the
tokens never reach the log, and the client's token is never passed on to an upstream.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import psutil
import pytest

from tests.support.mcp import error_message, mcp_session, raw_initialize, rpc
from tests.support.processes import Gateway, demo_server, start_gateway, start_http_upstream

TOKEN_A = "tok-A-7f3c9e21d4b8a605"
TOKEN_B = "tok-B-0d6e1f94a3c27b58"
BEARER_A = {"Authorization": f"Bearer {TOKEN_A}"}
BEARER_B = {"Authorization": f"Bearer {TOKEN_B}"}
PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    upstream = start_http_upstream("--name", "remote")
    try:
        gateway = start_gateway(
            tmp_path_factory.mktemp("auth"),
            {"demo": demo_server(), "remote": {"url": upstream.url}},
            {"auth": {"tokens": [TOKEN_A, TOKEN_B]}},
        )
        children = gateway.children()
        try:
            yield gateway
        finally:
            children += gateway.children()
            gateway.stop()
            _, alive = psutil.wait_procs(children, timeout=10)
            assert not alive, f"gateway left children running: {alive}"
    finally:
        upstream.stop()


# (method, path) of every route that needs a token.
PROTECTED = [
    ("POST", "/mcp"),
    ("GET", "/mcp"),
    ("DELETE", "/mcp"),
    ("POST", "/servers/demo/mcp"),
    ("GET", "/servers/demo/mcp"),
    ("POST", "/servers/nope/mcp"),  # no token, no list of known servers either
    ("GET", "/servers"),
    ("POST", "/servers/demo/restart"),
    ("POST", "/servers/demo/stop"),
]
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


def _request(gw: Gateway, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    mcp = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    body = json.dumps(INITIALIZE).encode() if method == "POST" else None
    return httpx.request(method, gw.base + path, headers={**mcp, **headers}, content=body, timeout=10)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer wrong-token"}, "a valid bearer token is required"),
        ({"Authorization": f"Basic {TOKEN_A}"}, "missing bearer token"),
        ({"Authorization": "Bearer"}, "missing bearer token"),
        ({"Authorization": f"Bearer {TOKEN_A}x"}, "a valid bearer token is required"),
    ],
)
def test_without_a_valid_token_is_401(gw: Gateway, method: str, path: str, headers: dict[str, str], says: str) -> None:
    response = _request(gw, method, path, headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert error_message(response) == says
    assert "known" not in response.text


def test_the_probes_stay_open(gw: Gateway) -> None:
    assert httpx.get(gw.base + "/healthz", timeout=10).json() == {"status": "ok"}
    assert httpx.get(gw.base + "/readyz", timeout=10).json() == {"status": "ready"}


@pytest.mark.anyio
@pytest.mark.parametrize("headers", [BEARER_A, BEARER_B, {"Authorization": f"bearer {TOKEN_B}"}])
async def test_a_right_token_works(gw: Gateway, headers: dict[str, str]) -> None:
    with anyio.fail_after(30):
        async with mcp_session(gw.url(), headers=headers) as session:
            result = await session.call_tool("demo__echo", {"text": "authorized"})
            assert result.content[0].text == "authorized"  # type: ignore[union-attr]
        async with mcp_session(gw.url("demo"), headers=headers) as session:
            assert "echo" in {tool.name for tool in (await session.list_tools()).tools}
    servers = await anyio.to_thread.run_sync(functools.partial(httpx.get, gw.base + "/servers", headers=headers))
    assert servers.status_code == 200 and {s["id"] for s in servers.json()["servers"]} == {"demo", "remote"}


def test_a_session_belongs_to_its_token(gw: Gateway) -> None:
    session_id = raw_initialize(gw, "/mcp")  # gw.headers carry TOKEN_A
    assert rpc(gw, "/mcp", PING, session_id).json()["result"] == {}
    other = rpc(gw, "/mcp", PING, session_id, **BEARER_B)
    assert other.status_code == 404, other.text
    assert "Session not found" in error_message(other)
    delete = httpx.delete(
        gw.url(), headers={**BEARER_B, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}, timeout=10
    )
    assert delete.status_code == 404
    assert rpc(gw, "/mcp", PING, session_id).json()["result"] == {}  # still there for its owner


@pytest.mark.anyio
async def test_the_client_token_is_not_passed_upstream(gw: Gateway) -> None:
    with anyio.fail_after(30):
        async with mcp_session(gw.url("remote"), headers=BEARER_A) as session:
            who = await session.call_tool("whoami", {})
    assert who.structured_content is not None
    seen: dict[str, Any] = who.structured_content["headers"]
    assert TOKEN_A not in str(seen)
    assert "authorization" not in seen


def test_tokens_never_reach_the_log(gw: Gateway) -> None:
    """Runs last: every request above, good and bad, has been logged at debug level by now."""
    log = gw.log()
    assert TOKEN_A not in log and TOKEN_B not in log
    assert TOKEN_A[4:] not in log and TOKEN_B[4:] not in log
