"""Arbitrary JSON and raw bytes, thrown at the gateway from both sides, through real processes.

(a) As downstream request bodies, on `/mcp` and on `/servers/demo/mcp`: raw bytes, any JSON value,
and JSON-RPC envelopes whose every field is arbitrary. (b) As upstream messages: a real stdio
server and a real HTTP server (`replay`) send crafted lines before (or instead of) their answer.
After every example: no 5xx, the answer is JSON-RPC (or the 202 of a notification), and the next
good request is answered, so no server is wedged. At the end: no traceback or unlogged task death
in the gateway's log, and no request failed as a gateway bug (`error_type="internal"`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.mcp import raw_initialize
from tests.support.metrics import scrape
from tests.support.processes import (
    Gateway,
    Upstream,
    demo_server,
    misbehaving_server,
    start_gateway,
    start_http_upstream,
)

EXAMPLES = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12
)
methods = (
    st.sampled_from(
        [
            "initialize",
            "ping",
            "tools/list",
            "tools/call",
            "prompts/get",
            "resources/read",
            "resources/subscribe",
            "completion/complete",
            "logging/setLevel",
            "notifications/cancelled",
            "notifications/initialized",
            "server/discover",
        ]
    )
    | st.text()
)
names = st.sampled_from(["demo__echo", "demo__add", "demo__fail", "echo", "add", "nope__x", "demo__", "__", ""])
params = st.fixed_dictionaries(
    {},
    optional={
        "name": names | json_values,
        "arguments": json_values,
        "uri": st.sampled_from(["demo://readme", "demo://echo/x"]) | json_values,
        "ref": json_values,
        "cursor": json_values,
        "level": json_values,
        "_meta": json_values,
        "requestId": json_values,
    },
)
envelopes = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | json_values},
    optional={"id": json_values, "method": methods | json_values, "params": params | json_values},
)
ECHO: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": "good",
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "ok"}},
}


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[Upstream]:
    upstream = start_http_upstream(module="tests.servers.http_raw")
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, raw_upstream: Upstream) -> Iterator[Gateway]:
    servers = {
        "demo": demo_server(lazy=False, request_timeout=2),
        "bad": misbehaving_server(lazy=False, request_timeout=0.3, restart={"backoff_initial": 0.05}),
        "raw": {"url": raw_upstream.url, "request_timeout": 2},
    }
    gateway = start_gateway(tmp_path_factory.mktemp("fuzz"), servers)
    yield gateway
    gateway.stop()
    log = gateway.log()
    assert "Traceback" not in log and "never retrieved" not in log, log[-5000:]


@pytest.fixture(scope="module")
def sessions(gw: Gateway) -> dict[str, str]:
    return {
        path: raw_initialize(gw, path) for path in ("/mcp", "/servers/demo/mcp", "/servers/bad/mcp", "/servers/raw/mcp")
    }


def _post(gw: Gateway, path: str, session_id: str, body: bytes) -> httpx.Response:
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": "2025-11-25",
    }
    return httpx.post(gw.base + path, content=body, headers=headers, timeout=30)


def _answers(response: httpx.Response) -> list[Any]:
    """The JSON-RPC messages of a reply (JSON or SSE); none for a 202."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code == 202:
        return []
    if response.headers["content-type"].startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    return [response.json()]


def _still_serves(gw: Gateway, sessions: dict[str, str], path: str) -> None:
    good = ECHO if path != "/mcp" else {**ECHO, "params": {**ECHO["params"], "name": "demo__echo"}}
    if path in ("/servers/bad/mcp", "/servers/raw/mcp"):
        good = {**ECHO, "params": {"name": "replay", "arguments": {"lines": []}}}
    [answer] = _answers(_post(gw, path, sessions[path], json.dumps(good).encode()))[-1:]
    assert answer["id"] == "good" and "result" in answer, answer


def _check_reply(response: httpx.Response, request: Any) -> None:
    answers = _answers(response)
    if response.status_code >= 400:
        assert isinstance(answers[-1].get("error"), dict), answers
    for answer in answers:
        assert answer.get("jsonrpc") == "2.0", answer


# -- (a) downstream -----------------------------------------------------------------------------


@EXAMPLES
@given(body=st.binary(max_size=200), path=st.sampled_from(["/mcp", "/servers/demo/mcp"]))
def test_raw_bytes_as_a_request_body(gw: Gateway, sessions: dict[str, str], body: bytes, path: str) -> None:
    _answers(_post(gw, path, sessions[path], body))
    _still_serves(gw, sessions, path)


@EXAMPLES
@given(message=json_values | envelopes, path=st.sampled_from(["/mcp", "/servers/demo/mcp"]))
def test_any_json_as_a_request(gw: Gateway, sessions: dict[str, str], message: Any, path: str) -> None:
    _check_reply(_post(gw, path, sessions[path], json.dumps(message).encode()), message)
    _still_serves(gw, sessions, path)


# -- (b) upstream ------------------------------------------------------------------------------


def _crafted(value: Any, kind: str) -> str:
    """One line an upstream sends: a raw value, or an envelope around it ($ID: the request's id)."""
    encoded = json.dumps(value)
    return {
        "raw": encoded,
        "result": '{"jsonrpc":"2.0","id":$ID,"result":' + encoded + "}",
        "error": '{"jsonrpc":"2.0","id":$ID,"error":' + encoded + "}",
        "id": '{"jsonrpc":"2.0","id":' + encoded + ',"result":{}}',
        "notification": '{"jsonrpc":"2.0","method":"notifications/progress","params":' + encoded + "}",
        "request": '{"jsonrpc":"2.0","id":' + encoded + ',"method":"roots/list","params":{}}',
        "method": '{"jsonrpc":"2.0","method":' + encoded + "}",
    }[kind]


kinds = st.sampled_from(["raw", "result", "error", "id", "notification", "request", "method"])
lines = st.lists(st.tuples(json_values, kinds).map(lambda pair: _crafted(*pair)) | st.text(max_size=50), max_size=4)


@EXAMPLES
@given(crafted=lines, answer=st.booleans(), server=st.sampled_from(["bad", "raw"]), sse=st.booleans())
def test_any_upstream_message(
    gw: Gateway, sessions: dict[str, str], crafted: list[str], answer: bool, server: str, sse: bool
) -> None:
    path = f"/servers/{server}/mcp"
    arguments = {"lines": crafted, "answer": answer, "sse": sse}
    call = {"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": {"name": "replay", "arguments": arguments}}
    response = _post(gw, path, sessions[path], json.dumps(call).encode())
    assert response.status_code == 200, response.text[:500]
    final = _answers(response)[-1]
    assert final["id"] == 77 and ("result" in final or isinstance(final.get("error"), dict)), final
    _still_serves(gw, sessions, path)


def test_no_request_failed_as_a_gateway_bug(gw: Gateway) -> None:
    """Runs after the fuzzing above (tests run in file order): every failure had a cause outside the gateway."""
    metrics = scrape(gw)
    assert metrics.total("mcp_gateway_errors_total", error_type="internal") == 0
