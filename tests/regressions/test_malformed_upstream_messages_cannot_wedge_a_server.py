"""One malformed message from an upstream is skipped (or fails its own request), never more (F3, F4).

A stdio server that wrote `{"jsonrpc":"2.0","id":[5],"result":{}}`, or a progress notification
whose params were a list, killed the task reading its stdout: that call and every later one timed
out, `/servers` still said `running`, nothing was logged, and it recovered only after 30 s idle.
A reply whose `result` was not an object, from stdio or HTTP, was an HTTP 500. Now every message
is checked before it is used: a malformed one is logged and skipped, an invalid response fails its
own request with a clear error, and the server goes on serving.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.mcp import raw_initialize, rpc
from tests.support.processes import Gateway, Upstream, misbehaving_server

ID_AS_LIST = '{"jsonrpc":"2.0","id":[5],"result":{}}'
PROGRESS_AS_LIST = '{"jsonrpc":"2.0","method":"notifications/progress","params":[1,2]}'
REQUEST_WITH_OBJECT_ID = '{"jsonrpc":"2.0","id":{"a":1},"method":"roots/list"}'
NOT_AN_OBJECT_RESULT = '{"jsonrpc":"2.0","id":$ID,"result":"not an object"}'
ERROR_WITHOUT_CODE = '{"jsonrpc":"2.0","id":$ID,"error":{"message":"no code"}}'


def _replay(gw: Gateway, server: str, lines: list[str], answer: bool = True, **extra: Any) -> dict[str, Any]:
    path = f"/servers/{server}/mcp"
    session_id = raw_initialize(gw, path)
    arguments = {"lines": lines, "answer": answer, **extra}
    message = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "replay", "arguments": arguments}}
    response = rpc(gw, path, message, session_id)
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        reply: dict[str, Any] = json.loads(data[-1])
    else:
        reply = response.json()
    assert reply["id"] == 9
    return reply


@pytest.mark.parametrize("line", [ID_AS_LIST, PROGRESS_AS_LIST, REQUEST_WITH_OBJECT_ID])
def test_a_malformed_stdio_message_is_skipped(gateway_factory: Any, line: str) -> None:
    gw = gateway_factory({"bad": misbehaving_server()})
    for _ in range(3):  # the reader is alive: later calls are answered too
        assert _replay(gw, "bad", [line])["result"]["content"][0]["text"] == "replayed"
    assert gw.server("bad")["state"] == "running"
    assert "server bad sent a" in gw.log() and "skipped" in gw.log()
    assert "Traceback" not in gw.log()


@pytest.mark.parametrize(
    ("line", "says"),
    [(NOT_AN_OBJECT_RESULT, '"result" is not an object'), (ERROR_WITHOUT_CODE, '"error.code" is not an integer')],
)
def test_an_invalid_stdio_response_fails_its_request(gateway_factory: Any, line: str, says: str) -> None:
    gw = gateway_factory({"bad": misbehaving_server()})
    error = _replay(gw, "bad", [line], answer=False)["error"]
    assert error["data"]["reason"] == "invalid_response" and says in error["message"], error
    assert _replay(gw, "bad", [])["result"]["content"][0]["text"] == "replayed"
    assert "Traceback" not in gw.log()


@pytest.mark.parametrize("sse", [True, False])
def test_an_http_reply_with_a_list_id_is_a_clear_error(gateway_factory: Any, http_raw: Upstream, sse: bool) -> None:
    gw = gateway_factory({"raw": {"url": http_raw.url}})
    error = _replay(gw, "raw", ['{"jsonrpc":"2.0","id":[$ID],"result":{}}'], answer=False, sse=sse)["error"]
    assert error["data"]["reason"] == "invalid_response" and "without answering it" in error["message"], error
    error = _replay(gw, "raw", [NOT_AN_OBJECT_RESULT], answer=False, sse=sse)["error"]
    assert '"result" is not an object' in error["message"], error
    assert "Traceback" not in gw.log()


def test_the_aggregate_lists_past_a_server_with_a_malformed_list(gateway_factory: Any) -> None:
    """A server whose tools/list result has a non-list `tools` is listed as having none, not a 500."""
    gw = gateway_factory({"bad": misbehaving_server()})
    session_id = raw_initialize(gw, "/mcp")
    _replay(gw, "bad", [])  # the server is up
    response = rpc(gw, "/mcp", {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, session_id)
    assert response.status_code == 200 and "bad__echo" in response.text
