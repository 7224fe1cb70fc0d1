"""JSON nested deeper than orjson writes passes through, and deeper than anything writes is refused (F5).

orjson reads 1,024 levels but writes only 254: `tools/call` with arguments 300 deep was an HTTP 500
(`TypeError: Recursion limit reached`), and so was an upstream reply that deep on its way back.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.mcp import raw_initialize, rpc
from tests.support.processes import Gateway, misbehaving_server


def _nested(depth: int) -> Any:
    value: Any = "core"
    for _ in range(depth):
        value = [value]
    return value


def _call(gw: Gateway, arguments: dict[str, Any] | bytes) -> dict[str, Any]:
    session_id = raw_initialize(gw, "/servers/bad/mcp")
    params = json.dumps({"name": "replay", "arguments": "ARGS"}).encode()
    encoded = arguments if isinstance(arguments, bytes) else json.dumps(arguments).encode()
    body = b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":' + params.replace(b'"ARGS"', encoded) + b"}"
    response = rpc(gw, "/servers/bad/mcp", body, session_id)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["id"] == 4
    return answer


def test_arguments_300_deep_reach_the_server(gateway_factory: Any) -> None:
    gw = gateway_factory({"bad": misbehaving_server()})
    assert _call(gw, {"lines": [], "deep": _nested(300)})["result"]["content"][0]["text"] == "replayed"


def test_a_reply_300_deep_reaches_the_client(gateway_factory: Any) -> None:
    gw = gateway_factory({"bad": misbehaving_server()})
    reply = json.dumps({"jsonrpc": "2.0", "id": "$ID", "result": {"deep": _nested(300)}}).replace('"$ID"', "$ID")
    result = _call(gw, {"lines": [reply], "answer": False})["result"]
    assert result["deep"] == _nested(300)


def test_arguments_too_deep_to_write_are_invalid_params(gateway_factory: Any) -> None:
    gw = gateway_factory({"bad": misbehaving_server()})
    deep = b'{"lines":[],"deep":' + b"[" * 1000 + b'"core"' + b"]" * 1000 + b"}"  # beyond what json.dumps writes
    error = _call(gw, deep)["error"]
    assert error["code"] == -32602 and "nested too deeply" in error["message"], error
    assert _call(gw, {"lines": []})["result"]["content"][0]["text"] == "replayed"
    assert "Traceback" not in gw.log()
