"""Bad input from clients and faults from upstreams: each gets a clear error, and the gateway keeps serving.

One gateway process serves the whole module (the demo server and the misbehaving stdio server), so
every test also checks that the bad requests before it did not hurt the good ones after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import psutil
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support.mcp import error_message, mcp_session, raw_initialize, rpc
from tests.support.processes import Gateway, demo_server, misbehaving_server, start_gateway
from tests.support.waiting import eventually, wait_for

MAX_BODY = 4096
HANG_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    servers = {
        "demo": demo_server(),
        "bad": misbehaving_server(request_timeout=HANG_TIMEOUT, restart={"backoff_initial": 0.05}),
    }
    gateway = start_gateway(tmp_path_factory.mktemp("bad-input"), servers, {"limits": {"max_body_bytes": MAX_BODY}})
    children = gateway.children()
    yield gateway
    children += gateway.children()
    gateway.stop()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"gateway left children running: {alive}"


def _call(request_id: int, method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


ECHO = _call(99, "tools/call", name="demo__echo", arguments={"text": "still here"})


def assert_serves(gw: Gateway, path: str = "/mcp") -> None:
    """A new client can still initialize and call a tool: the bad requests before did no harm."""
    session_id = raw_initialize(gw, path)
    message = ECHO if path == "/mcp" else {**ECHO, "params": {**ECHO["params"], "name": "echo"}}
    response = rpc(gw, path, message, session_id)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["content"][0]["text"] == "still here"


def _error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    """The JSON-RPC error of `response`, after checking its HTTP status and code."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert "Traceback" not in response.text
    return error


def _http_error(response: httpx.Response, status: int) -> str:
    """The message of an answer outside JSON-RPC, after checking its status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return error_message(response)


@pytest.fixture(scope="module")
def session_id(gw: Gateway) -> str:
    return raw_initialize(gw, "/mcp")


# -- JSON-RPC shape ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{bad", b"", b"\xff\xfe", b"[" * 2000, b'{"jsonrpc": "2.0", "id": 1,'])
def test_malformed_json_is_a_parse_error(gw: Gateway, session_id: str, body: bytes) -> None:
    error = _error(rpc(gw, "/mcp", body, session_id), 400, -32700)
    assert "not valid JSON" in error["message"]
    assert_serves(gw)


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ([], "batches are not supported"),
        ([{"jsonrpc": "2.0", "id": 1, "method": "ping"}], "batches are not supported"),
        ("ping", "must be a JSON object"),
        (None, "must be a JSON object"),
        ({"foo": 1}, '"jsonrpc" must be "2.0"'),
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, '"jsonrpc" must be "2.0"'),
        ({"jsonrpc": "2.0", "id": 1}, "neither a request, a notification nor a response"),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, '"method" must be a string'),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, '"id" must be a string or an integer'),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}, '"id" must be a string or an integer'),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, '"id" must be a string or an integer'),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}, '"params" must be an object'),
        ({"jsonrpc": "2.0", "method": "initialize", "params": {}}, "initialize must be a request with an id"),
    ],
)
def test_json_that_is_not_json_rpc_is_an_invalid_request(gw: Gateway, session_id: str, message: Any, says: str) -> None:
    error = _error(rpc(gw, "/mcp", json.dumps(message).encode(), session_id), 400, -32600)
    assert says in error["message"]
    assert_serves(gw)


def test_unknown_method(gw: Gateway, session_id: str) -> None:
    error = _error(rpc(gw, "/mcp", _call(2, "nope/method"), session_id), 200, -32601)
    assert "nope/method" in error["message"]
    demo_session = raw_initialize(gw, "/servers/demo/mcp")
    _error(rpc(gw, "/servers/demo/mcp", _call(3, "nope/method"), demo_session), 200, -32601)  # the upstream's own
    assert_serves(gw)


def test_unknown_server_id_is_404_listing_the_known_ones(gw: Gateway) -> None:
    response = rpc(gw, "/servers/nope/mcp", _call(1, "initialize", protocolVersion="2025-11-25", capabilities={}))
    assert "'nope'" in _http_error(response, 404)
    assert response.json()["error"]["data"]["known"] == ["bad", "demo"]
    for action in ("restart", "stop"):
        admin = gw.post(f"/servers/nope/{action}")
        assert "'nope'" in _http_error(admin, 404)
        assert admin.json()["known"] == ["bad", "demo"]
    assert_serves(gw)


# -- names the aggregate cannot route ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope__echo", "echo", "demo__", "__echo"])
def test_unknown_namespaced_tool_names_the_tool(gw: Gateway, session_id: str, name: str) -> None:
    error = _error(rpc(gw, "/mcp", _call(2, "tools/call", name=name, arguments={}), session_id), 200, -32602)
    assert repr(name) in error["message"]
    assert error["data"]["tool"] == name
    assert_serves(gw)


@pytest.mark.parametrize("params", [{}, {"name": 5}, {"name": None, "arguments": {}}])
def test_tool_name_must_be_a_string(gw: Gateway, session_id: str, params: dict[str, Any]) -> None:
    error = _error(rpc(gw, "/mcp", _call(2, "tools/call", **params), session_id), 200, -32602)
    assert error["message"] == "tool name must be a string"
    assert_serves(gw)


def test_unknown_tool_of_a_known_server_is_answered_by_that_server(gw: Gateway, session_id: str) -> None:
    """The demo server (MCP python-sdk) reports an unknown tool as an isError result; it is passed through."""
    response = rpc(gw, "/mcp", _call(2, "tools/call", name="demo__nope", arguments={}), session_id)
    result = response.json()["result"]
    assert result["isError"] is True
    assert "Unknown tool: nope" in result["content"][0]["text"]
    assert_serves(gw)


def test_unknown_prompt(gw: Gateway, session_id: str) -> None:
    error = _error(rpc(gw, "/mcp", _call(2, "prompts/get", name="nope__greet"), session_id), 200, -32602)
    assert "'nope__greet'" in error["message"]
    upstream = rpc(gw, "/mcp", _call(3, "prompts/get", name="demo__nope"), session_id)
    assert upstream.status_code == 200
    # The server's own error, as it sent it (the SDK's, spoken to in 2026, does not say which prompt).
    assert upstream.json()["error"]["code"] in (-32602, -32603), upstream.text
    assert_serves(gw)


def test_resources_read_of_an_unknown_uri_names_the_uri(gw: Gateway, session_id: str) -> None:
    error = _error(rpc(gw, "/mcp", _call(2, "resources/read", uri="demo://nope"), session_id), 200, -32002)
    assert "'demo://nope'" in error["message"]
    assert error["data"]["uri"] == "demo://nope"
    assert_serves(gw)


def test_resources_read_of_a_known_uri_needs_no_list_first(gw: Gateway) -> None:
    """A client may read a URI it already knows; the gateway finds its owner without a resources/list."""
    session_id = raw_initialize(gw, "/mcp")
    for request_id, uri in enumerate(["demo://readme", "demo://echo/hi"]):
        response = rpc(gw, "/mcp", _call(request_id, "resources/read", uri=uri), session_id)
        assert response.json()["result"]["contents"][0]["uri"] == uri, response.text


@pytest.mark.parametrize("cursor", ["garbage", "", "e30=", 5, "eyJvIjogLTF9"])
def test_invalid_cursor_is_invalid_params(gw: Gateway, session_id: str, cursor: Any) -> None:
    error = _error(rpc(gw, "/mcp", _call(2, "tools/list", cursor=cursor), session_id), 200, -32602)
    assert "cursor" in error["message"]
    assert_serves(gw)


# -- HTTP-level faults ------------------------------------------------------------------------------


def test_oversized_body_with_content_length_is_413(gw: Gateway, session_id: str) -> None:
    message = _call(2, "tools/call", name="demo__echo", arguments={"text": "x" * MAX_BODY})
    message_text = _http_error(rpc(gw, "/mcp", message, session_id), 413)
    assert f"limit of {MAX_BODY} bytes" in message_text
    assert_serves(gw)


def test_oversized_chunked_body_is_413(gw: Gateway, session_id: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {"pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}}'

    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": "2025-11-25",
    }
    response = gw.post("/mcp", content=chunks(), headers=headers)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert f"limit of {MAX_BODY} bytes" in _http_error(response, 413)
    assert_serves(gw)


def test_unknown_and_ended_sessions_are_404(gw: Gateway) -> None:
    ping = _call(2, "ping")
    assert "Session not found" in _http_error(rpc(gw, "/mcp", ping, "0" * 32), 404)
    session_id = raw_initialize(gw, "/mcp")
    assert rpc(gw, "/mcp", ping, session_id).json()["result"] == {}
    headers = {**gw.headers, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
    assert httpx.delete(gw.url(), headers=headers, timeout=10).status_code == 200
    assert "Session not found" in _http_error(rpc(gw, "/mcp", ping, session_id), 404)
    assert "Session not found" in _http_error(httpx.delete(gw.url(), headers=headers, timeout=10), 404)
    # A session belongs to the endpoint that created it.
    demo_session = raw_initialize(gw, "/servers/demo/mcp")
    assert "Session not found" in _http_error(rpc(gw, "/mcp", ping, demo_session), 404)
    assert_serves(gw)


def test_missing_session_id_is_400(gw: Gateway) -> None:
    assert "Mcp-Session-Id" in _http_error(rpc(gw, "/mcp", _call(2, "tools/list")), 400)
    for method in ("GET", "DELETE"):  # only a 2025 session has a stream or an end: 2026 has neither
        response = httpx.request(method, gw.url(), headers={"Accept": "text/event-stream"}, timeout=10)
        assert "Mcp-Session-Id" in _http_error(response, 405)
        assert response.headers["allow"] == "POST"
    assert_serves(gw)


@pytest.mark.parametrize("version", ["2025-11-25", "2025-06-18"])
def test_protocol_version_header_is_required_since_2025_06_18(gw: Gateway, version: str) -> None:
    session_id = raw_initialize(gw, "/mcp", version)
    missing = rpc(gw, "/mcp", _call(2, "ping"), None, **{"Mcp-Session-Id": session_id})
    assert "MCP-Protocol-Version header is required" in _http_error(missing, 400)
    unsupported = rpc(gw, "/mcp", _call(3, "ping"), session_id, **{"MCP-Protocol-Version": "1999-01-01"})
    assert "'1999-01-01'" in _http_error(unsupported, 400)
    assert rpc(gw, "/mcp", _call(4, "ping"), session_id, **{"MCP-Protocol-Version": version}).status_code == 200
    assert_serves(gw)


def test_a_2025_03_26_session_works_without_the_version_header(gw: Gateway) -> None:
    session_id = raw_initialize(gw, "/mcp", "2025-03-26")
    response = rpc(gw, "/mcp", ECHO, None, **{"Mcp-Session-Id": session_id})
    assert response.json()["result"]["content"][0]["text"] == "still here", response.text


@pytest.mark.parametrize(
    ("requested", "negotiated"),
    [
        ("2025-11-25", "2025-11-25"),
        ("2025-06-18", "2025-06-18"),
        ("2025-03-26", "2025-03-26"),
        ("2099-01-01", "2025-11-25"),
        (None, "2025-11-25"),
    ],
)
def test_initialize_negotiates_the_protocol_version(gw: Gateway, requested: str | None, negotiated: str) -> None:
    params: dict[str, Any] = {"capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    if requested is not None:
        params["protocolVersion"] = requested
    for path in ("/mcp", "/servers/demo/mcp"):
        response = rpc(gw, path, _call(1, "initialize", **params))
        assert response.status_code == 200, response.text
        assert response.json()["result"]["protocolVersion"] == negotiated
        assert response.headers["mcp-session-id"]


def test_accept_without_json_or_sse_is_406(gw: Gateway, session_id: str) -> None:
    response = rpc(gw, "/mcp", _call(2, "ping"), session_id, Accept="text/html")
    assert "Not Acceptable" in _http_error(response, 406)
    assert_serves(gw)


def test_origin_must_be_allowed(gw: Gateway, session_id: str) -> None:
    refused = rpc(gw, "/mcp", _call(2, "ping"), session_id, Origin="http://evil.example")
    assert "'http://evil.example'" in _http_error(refused, 403)
    allowed = rpc(gw, "/mcp", _call(3, "ping"), session_id, Origin="http://localhost:1234")
    assert allowed.json()["result"] == {}, allowed.text
    assert_serves(gw)


def test_server_discover_without_a_session_is_refused(gw: Gateway) -> None:
    """The 2026 probe of the SDK's `mcp.Client` gets a 4xx, so the client falls back to initialize."""
    probe = rpc(gw, "/mcp", _call(1, "server/discover"), None, **{"MCP-Protocol-Version": "2026-07-28"})
    assert 400 <= probe.status_code < 500, probe.text
    assert_serves(gw)


@pytest.mark.anyio
async def test_the_sdk_client_in_auto_mode_falls_back_to_initialize(gw: Gateway) -> None:
    with anyio.fail_after(30):
        async with Client(gw.url()) as client:
            result = await client.call_tool("demo__echo", {"text": "auto"})
    assert result.content[0].text == "auto"  # type: ignore[union-attr]


def test_get_opens_one_sse_stream_per_session(gw: Gateway, session_id: str) -> None:
    headers = {
        **gw.headers,
        "Accept": "text/event-stream",
        "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": "2025-11-25",
    }

    def open_stream(client: httpx.Client) -> int:
        with client.stream("GET", gw.url(), headers=headers) as stream:
            if stream.status_code == 200:
                assert stream.headers["content-type"].startswith("text/event-stream")
            return stream.status_code

    with httpx.Client(timeout=10) as client, client.stream("GET", gw.url(), headers=headers) as first:
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("text/event-stream")
        second = httpx.get(gw.url(), headers=headers, timeout=10)
        assert "already has an open GET stream" in _http_error(second, 409)
    # Once the first stream is gone, the session may open another.
    with httpx.Client(timeout=10) as client:
        wait_for(lambda: open_stream(client) == 200, 10, "the first GET stream to be released")
    assert_serves(gw)


# -- upstream faults --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_garbage_on_stdout_is_skipped(gw: Gateway) -> None:
    with anyio.fail_after(30):
        async with mcp_session(gw.url("bad")) as session:
            result = await session.call_tool("garbage", {})
            assert result.content[0].text == "garbage sent"  # type: ignore[union-attr]
            assert not result.is_error
    await eventually(
        lambda: "not JSON on stdout; skipped: b'this is not json'" in gw.log(), 10, "the skipped line logged"
    )
    assert_serves(gw, "/servers/bad/mcp")


@pytest.mark.anyio
async def test_hang_times_out_and_other_calls_go_on(gw: Gateway) -> None:
    echoed: list[str] = []
    with anyio.fail_after(30):
        async with mcp_session(gw.url("bad")) as session:

            async def echo() -> None:
                result = await session.call_tool("echo", {"text": "meanwhile"})
                echoed.append(result.content[0].text)  # type: ignore[union-attr]

            async with anyio.create_task_group() as group:
                group.start_soon(echo)
                with pytest.raises(MCPError) as caught:
                    await session.call_tool("hang", {})
    assert echoed == ["meanwhile"]
    assert caught.value.code == -32001
    assert f"did not answer tools/call within {HANG_TIMEOUT:g}s" in caught.value.message
    assert caught.value.data == {"server": "bad", "reason": "timeout", "timeout": HANG_TIMEOUT}
    assert_serves(gw, "/servers/bad/mcp")


@pytest.mark.anyio
async def test_crash_mid_call_is_an_error_naming_server_and_reason(gw: Gateway) -> None:
    with anyio.fail_after(30):
        async with mcp_session(gw.url("bad")) as session:
            with pytest.raises(MCPError) as caught:
                await session.call_tool("crash", {})
            data = caught.value.data
            assert (data["server"], data["reason"]) == ("bad", "crash")
            assert "exited with code 3" in data["detail"]
            assert "'bad'" in caught.value.message
            # The same client session goes on once the server is back.
            result = await session.call_tool("echo", {"text": "after the crash"})
            assert result.content[0].text == "after the crash"  # type: ignore[union-attr]
    assert_serves(gw, "/servers/bad/mcp")
    assert_serves(gw)


def test_no_traceback_in_the_log(gw: Gateway) -> None:
    """Every bad input above was answered at the boundary: nothing escaped as an unhandled exception."""
    gateway_lines = [line for line in gw.log().splitlines() if "gateway.upstream.stderr" not in line]
    assert not [line for line in gateway_lines if "Traceback" in line], "\n".join(gateway_lines)
