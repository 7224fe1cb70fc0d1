"""MCP 2026-07-28 on both endpoints: the official client in each mode, over 2025 upstreams (stdio and HTTP).

The gateway serves the 2026 revision itself and drives its upstreams in 2025 (the bridge of `gateway/modern.py`).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ElicitResult

from tests.conformance.runner import minimal_env
from tests.support.mcp import answer, raw_initialize, rpc
from tests.support.metrics import scrape
from tests.support.processes import Gateway, Upstream, demo_server, everything_server
from tests.support.waiting import wait_for

pytestmark = pytest.mark.anyio

MODES = ("2026-07-28", "auto", "legacy")


class _Counting(httpx2.AsyncHTTPTransport):
    """Records the JSON-RPC method of every POST the client sends (the HTTP exchanges of a call)."""

    def __init__(self) -> None:
        super().__init__()
        self.methods: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST":
            body = json.loads(await request.aread())
            self.methods.append(str(body.get("method", "response")))
        else:
            self.methods.append(request.method)
        return await super().handle_async_request(request)


@asynccontextmanager
async def _client(url: str, mode: str, counting: _Counting | None = None, **options: Any) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(transport=counting or httpx2.AsyncHTTPTransport(), timeout=30.0)
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode, **options) as client:
        yield client


def _text(result: Any) -> str:
    return str(result.content[0].text)


async def test_every_client_mode_on_both_endpoints(gateway_factory: Any, http_upstream: Upstream) -> None:
    """Each mode of the official client, against a stdio and an HTTP server, and the exchanges of one call."""
    gw = gateway_factory({"demo": demo_server(), "remote": {"url": http_upstream.url}})
    for mode in MODES:
        await _every_endpoint(gw, mode)
        await _exchanges_per_call(gw, mode)


async def _every_endpoint(gw: Gateway, mode: str) -> None:
    expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
    async with _client(gw.url(), mode) as client:
        assert client.protocol_version == expected
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"demo__add", "remote__echo", "remote__route"} <= tools
        assert _text(await client.call_tool("demo__add", {"a": 2, "b": 3})) == "5"
        assert _text(await client.call_tool("remote__route", {"region": "eu west", "query": "q"})) == "q in eu west"
        prompt = await client.get_prompt("remote__summarize", {"topic": "MCP"})
        assert "MCP" in prompt.messages[0].content.text  # type: ignore[union-attr]
        info = await client.read_resource("upstream://info")
        assert "remote" in info.contents[0].text  # type: ignore[union-attr]
        failed = await client.call_tool("demo__fail", {"message": "boom"})
        assert failed.is_error
    for server, upstream_name in (("demo", "mcp-gateway-demo"), ("remote", "remote")):
        async with _client(gw.url(server), mode) as client:
            assert client.protocol_version == expected
            if mode != "2026-07-28":  # a pinned client takes no discover answer: it knows no server info
                assert client.server_info is not None and client.server_info.name == upstream_name
            steps: list[float] = []

            async def on_progress(
                progress: float, total: float | None, message: str | None, steps: list[float] = steps
            ) -> None:
                steps.append(progress)

            result = await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
            assert _text(result) == "completed 3 steps" and steps == [1.0, 2.0, 3.0]


async def _exchanges_per_call(gw: Gateway, mode: str) -> None:
    """`auto` settles on 2026-07-28 with one discover and no fallback; a pinned client sends the call alone."""
    counting = _Counting()
    async with _client(gw.url("demo"), mode, counting) as client:
        connect = list(counting.methods)
        await client.call_tool("echo", {"text": "hi"})  # the client may list tools once, to check results
        counting.methods.clear()
        await client.call_tool("echo", {"text": "again"})
        call = list(counting.methods)
    expected_connect = {"2026-07-28": [], "auto": ["server/discover"], "legacy": ["initialize"]}[mode]
    assert [method for method in connect if not method.startswith("notifications/")] == expected_connect
    call = [method for method in call if not method.startswith("notifications/")]
    assert call == ["tools/call"], mode


async def test_log_lines_reach_only_a_request_that_asked_at_its_level(
    gateway_factory: Any, http_upstream: Upstream
) -> None:
    gw = gateway_factory({"remote": {"url": http_upstream.url}})
    for level, expected in ((None, []), ("info", ["info", "warning"]), ("warning", ["warning"])):
        levels: list[str] = []

        async def on_log(params: Any, levels: list[str] = levels) -> None:
            levels.append(params.level)

        options: dict[str, Any] = {"logging_callback": on_log}
        if level is not None:
            options["log_level"] = level
        async with _client(gw.url("remote"), "2026-07-28", **options) as client:
            assert _text(await client.call_tool("chatty", {})) == "logged"
        assert levels == expected, level


async def test_discover_on_each_endpoint(gateway_factory: Any, http_upstream: Upstream) -> None:
    gw = gateway_factory({"demo": demo_server(), "remote": {"url": http_upstream.url}})
    merged = _post(gw, "/mcp", _request("server/discover"))
    assert merged.status_code == 200, merged.text
    result = merged.json()["result"]
    assert result["supportedVersions"] == ["2026-07-28"]
    assert result["resultType"] == "complete" and result["ttlMs"] == 0 and result["cacheScope"] == "private"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "mcp-gateway"
    assert {"tools", "prompts", "resources"} <= set(result["capabilities"])
    # List changes reach 2026 clients on subscriptions/listen; resource subscriptions are not carried yet.
    assert result["capabilities"]["tools"]["listChanged"] is True
    assert "subscribe" not in result["capabilities"]["resources"]
    one = _post(gw, "/servers/remote/mcp", _request("server/discover")).json()["result"]
    assert one["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "remote"
    assert "tools" in one["capabilities"]
    listed = _post(gw, "/servers/remote/mcp", _request("tools/list")).json()["result"]
    assert listed["resultType"] == "complete" and listed["cacheScope"] == "private"
    called = _post(gw, "/servers/remote/mcp", _call("echo", {"text": "x"})).json()["result"]
    assert called["resultType"] == "complete" and "ttlMs" not in called
    assert scrape(gw).total("mcp_gateway_requests_total", server_id="remote", method="server/discover") == 1


# -- the wire: raw POSTs ---------------------------------------------------------------------------

ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
}


def _request(method: str, request_id: Any = 41, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": dict(ENVELOPE)}}


def _call(name: str, arguments: dict[str, Any], request_id: Any = 41) -> dict[str, Any]:
    return _request("tools/call", request_id, name=name, arguments=arguments)


def _post(gw: Gateway, path: str, message: Any, **headers: str) -> httpx2.Response:
    """A 2026 POST whose headers mirror its body unless a test says otherwise (a header set to "" is left out)."""
    params = message.get("params") or {} if isinstance(message, dict) else {}
    mirrored = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2026-07-28",
    }
    if isinstance(message, dict) and "method" in message:
        mirrored["Mcp-Method"] = message["method"]
        name = params.get("name") or params.get("uri")
        if name is not None:
            mirrored["Mcp-Name"] = name
    sent = {key: value for key, value in {**mirrored, **headers}.items() if value}
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return gw.post(path, content=body, headers=sent)  # type: ignore[return-value]


def _spaced_name(gw: Gateway, path: str, name: str, twice: bool = False) -> int:
    """The status of a call whose Mcp-Name has whitespace around it (which httpx will not send), or comes twice."""
    connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    headers = {**gw.headers, "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    headers |= {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": f"  {name} "}
    body = json.dumps(_call(name, {"text": "x"})).encode()
    try:
        connection.putrequest("POST", path)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(key, value)
        if twice:
            connection.putheader("Mcp-Name", name)
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


def _error(response: Any, status: int, code: int, request_id: Any = 41) -> dict[str, Any]:
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["id"] == request_id and answer["error"]["code"] == code, answer
    error: dict[str, Any] = answer["error"]
    return error


@pytest.mark.parametrize("path", ["/mcp", "/servers/remote/mcp"])
async def test_2026_requests_that_are_wrong_get_the_error_that_says_so(
    gateway_factory: Any, http_upstream: Upstream, path: str
) -> None:
    gw = gateway_factory({"remote": {"url": http_upstream.url}})
    no_meta = {"jsonrpc": "2.0", "id": 41, "method": "tools/list", "params": {}}
    assert "_meta" in _error(_post(gw, path, no_meta), 400, -32602)["message"]
    half = _request("tools/list")
    del half["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    assert "clientCapabilities" in _error(_post(gw, path, half), 400, -32602)["message"]
    assert (
        "mcp-method"
        in _error(_post(gw, path, _request("tools/list"), **{"Mcp-Method": "prompts/list"}), 400, -32020)["message"]
    )
    _error(_post(gw, path, _request("tools/list"), **{"Mcp-Method": ""}), 400, -32020)
    _error(_post(gw, path, _request("tools/list"), **{"MCP-Protocol-Version": "2099-01-01"}), 400, -32020)
    future = _request("tools/list")
    future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    unsupported = _error(_post(gw, path, future, **{"MCP-Protocol-Version": "2099-01-01"}), 400, -32022)
    assert unsupported["data"] == {"supported": ["2026-07-28"], "requested": "2099-01-01"}
    name = "remote__echo" if path == "/mcp" else "echo"
    _error(_post(gw, path, _call(name, {"text": "x"}), **{"Mcp-Name": "other"}), 400, -32020)
    _error(_post(gw, path, _call(name, {"text": "x"}), **{"Mcp-Name": ""}), 400, -32020)
    assert _spaced_name(gw, path, name) == 200  # whitespace around a header value is not part of it
    assert _spaced_name(gw, path, name, twice=True) == 400  # readers of the first and the last copy would differ
    for removed in ("ping", "initialize", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"):
        _error(_post(gw, path, _request(removed)), 404, -32601)
    loud = _request("tools/list")
    loud["params"]["_meta"]["io.modelcontextprotocol/logLevel"] = "loud"
    _error(_post(gw, path, loud), 400, -32602)
    assert _post(gw, path, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}}).status_code == 202
    posted_response = {"jsonrpc": "2.0", "id": 41, "result": {}}
    _error(_post(gw, path, posted_response, **{"Mcp-Method": ""}), 400, -32600)
    for verb in ("GET", "DELETE"):
        answer = httpx2.request(verb, gw.base + path, headers=gw.headers, timeout=30)
        assert answer.status_code == 405 and answer.headers["allow"] == "POST", answer.text
    metrics = scrape(gw)
    assert metrics.total("mcp_gateway_rejections_total", reason="header_mismatch") == 6
    assert metrics.total("mcp_gateway_rejections_total", reason="unsupported_version") == 1


async def test_mcp_param_headers_must_mirror_the_marked_arguments(
    gateway_factory: Any, http_upstream: Upstream
) -> None:
    gw = gateway_factory({"remote": {"url": http_upstream.url}})
    for path, name in (("/servers/remote/mcp", "route"), ("/mcp", "remote__route")):
        assert _post(gw, path, _request("tools/list")).status_code == 200  # the gateway learns the marks
        arguments = {"region": "Hello, 世界", "query": "q"}
        encoded = "=?base64?SGVsbG8sIOS4lueVjA==?="
        ok = _post(gw, path, _call(name, arguments), **{"Mcp-Param-Region": encoded})
        assert ok.status_code == 200 and ok.json()["result"]["content"][0]["text"] == "q in Hello, 世界", ok.text
        _error(_post(gw, path, _call(name, arguments)), 400, -32020)
        _error(_post(gw, path, _call(name, arguments), **{"Mcp-Param-Region": "elsewhere"}), 400, -32020)
        _error(_post(gw, path, _call(name, arguments), **{"Mcp-Param-Region": "=?base64?SGVsbG8?=x"}), 400, -32020)


async def test_errors_carry_the_request_id_in_both_eras(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_server()})
    legacy = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    path = "/servers/demo/mcp"
    no_session = gw.post(path, json={"jsonrpc": "2.0", "id": "abc", "method": "tools/list"}, headers=legacy)
    assert no_session.status_code == 400 and no_session.json()["id"] == "abc", no_session.text
    unknown = {**legacy, "Mcp-Session-Id": "nope", "MCP-Protocol-Version": "2025-11-25"}
    gone = gw.post(path, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, headers=unknown)
    assert gone.status_code == 404 and gone.json()["id"] == 9, gone.text
    bad_params = gw.post(
        "/servers/demo/mcp", json={"jsonrpc": "2.0", "id": 8, "method": "x", "params": 3}, headers=legacy
    )
    assert bad_params.status_code == 400 and bad_params.json()["id"] == 8, bad_params.text
    unreadable = gw.post(path, content=b"{", headers=legacy)
    assert unreadable.status_code == 400 and unreadable.json()["id"] is None


async def test_a_2025_servers_question_reaches_a_2026_client_as_input_required(gateway_factory: Any) -> None:
    """server-everything (2025) asks for an elicitation mid-call: the call is held, the 2026 client answers."""
    gw = gateway_factory({"everything": everything_server(env=minimal_env())})
    answered: list[str] = []

    async def on_elicit(context: Any, params: Any) -> ElicitResult:
        answered.append(params.message)
        return ElicitResult(action="accept", content={"name": "Ada", "check": True, "email": "ada@example.com"})

    for path, tool in (
        ("/servers/everything/mcp", "trigger-elicitation-request"),
        ("/mcp", "everything__trigger-elicitation-request"),
    ):
        async with _client(gw.base + path, "2026-07-28", elicitation_callback=on_elicit) as client:
            result = await client.call_tool(tool, {})
            assert not result.is_error and "Ada" in json.dumps(result.model_dump(mode="json")), result
    assert len(answered) == 2
    metrics = scrape(gw)
    assert metrics.total("mcp_gateway_input_required_rounds_total", bridge="held") == 2
    assert metrics.total("mcp_gateway_held_calls") == 0


def test_a_held_call_refuses_a_state_that_is_altered_or_comes_too_late(gateway_factory: Any) -> None:
    gw = gateway_factory({"everything": everything_server(env=minimal_env())}, {"limits": {"input_hold_seconds": 1}})
    envelope = {**ENVELOPE, "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}
    call = _request("tools/call", 1, name="trigger-elicitation-request", arguments={})
    call["params"]["_meta"] = envelope
    first = _post(gw, "/servers/everything/mcp", call).json()["result"]
    assert first["resultType"] == "input_required", first
    ((key, question),) = first["inputRequests"].items()
    assert question["method"] == "elicitation/create"
    retry = {**call, "id": 2, "params": {**call["params"], "inputResponses": {key: {"action": "decline"}}}}
    tampered = {**retry, "params": {**retry["params"], "requestState": first["requestState"] + "x"}}
    assert _error(_post(gw, "/servers/everything/mcp", tampered), 400, -32602, 2)["data"]["reason"] == "state_tampered"
    # Not answered in time: the call is dropped (its upstream request cancelled), and a late retry is told so.
    wait_for(lambda: scrape(gw).total("mcp_gateway_held_calls") == 0, what="the held call to expire")
    late = {**retry, "params": {**retry["params"], "requestState": first["requestState"]}}
    assert _error(_post(gw, "/servers/everything/mcp", late), 400, -32602, 2)["data"]["reason"] == "state_expired"


async def test_a_server_that_answers_discover_with_garbage_is_a_2025_server(
    gateway_factory: Any, http_raw: Upstream
) -> None:
    odd = {name: {"url": f"{http_raw.url}?discover={name}"} for name in ("garbage", "wrong")}
    gw = gateway_factory(odd)
    for name in odd:
        for mode in MODES:
            async with _client(gw.url(name), mode) as client:
                assert _text(await client.call_tool("echo", {"text": name})) == name
        assert gw.server(name)["protocol_version"] == "2025-11-25" and gw.server(name)["state"] == "running"


async def test_a_marked_argument_reaches_a_2026_server_in_its_header_even_before_any_listing(
    gateway_factory: Any, http_upstream: Upstream
) -> None:
    """The gateway mirrors `region` into Mcp-Param-Region; not knowing the tool yet, it lists and sends again."""
    gw = gateway_factory({"remote": {"url": http_upstream.url}})
    session_id = raw_initialize(gw, "/servers/remote/mcp")  # a 2025 client that never lists the tools
    call = {"name": "route", "arguments": {"region": "us west", "query": "q"}}
    response = rpc(
        gw, "/servers/remote/mcp", {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": call}, session_id
    )
    assert answer(response)["result"]["content"][0]["text"] == "q in us west", response.text
    listed = scrape(gw).total("mcp_gateway_requests_total", server_id="remote", method="tools/list")
    assert listed == 1  # the server refused the call without the header: the gateway listed, and sent again
    async with _client(gw.url("remote"), "2026-07-28") as client:
        assert _text(await client.call_tool("route", {"region": "Zürich", "query": "q"})) == "q in Zürich"
