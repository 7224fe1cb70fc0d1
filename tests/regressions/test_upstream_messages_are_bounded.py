"""Every message from an upstream has a size bound; one over it fails its request, clearly (F9).

HTTP replies were read whole, however large: a 300 MiB JSON reply took the gateway from 84 to
984 MiB and was forwarded. stdio had a bound (64 MiB) but a message over it killed the server for
everyone. Now both are bounded by `limits.max_upstream_message_bytes`: the message is dropped
unread, its request fails with `reason: too_large`, and the server goes on serving.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.mcp import raw_initialize, rpc
from tests.support.processes import Gateway, Upstream, misbehaving_server

LIMIT = 1024 * 1024
LIMITS = {"limits": {"max_upstream_message_bytes": LIMIT}}


def _call(gw: Gateway, server: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    path = f"/servers/{server}/mcp"
    session_id = raw_initialize(gw, path)
    message = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    response = rpc(gw, path, message, session_id)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["id"] == 5
    return answer


@pytest.mark.parametrize("sse", [True, False])
def test_an_oversized_http_reply_fails_its_request(gateway_factory: Any, http_raw: Upstream, sse: bool) -> None:
    gw = gateway_factory({"raw": {"url": http_raw.url}}, LIMITS)

    error = _call(gw, "raw", "big", {"size": 3 * LIMIT, "sse": sse})["error"]
    assert error["data"]["reason"] == "too_large" and error["data"]["limit"] == LIMIT, error
    assert f"over the gateway's limit of {LIMIT} bytes" in error["message"]

    fits = _call(gw, "raw", "big", {"size": LIMIT // 2, "sse": sse})
    assert len(fits["result"]["content"][0]["text"]) == LIMIT // 2


def test_an_oversized_stdio_message_fails_its_request_and_the_server_lives_on(gateway_factory: Any) -> None:
    gw = gateway_factory({"bad": misbehaving_server()}, LIMITS)
    error = _call(gw, "bad", "big", {"size": 3 * LIMIT})["error"]
    assert error["data"]["reason"] == "too_large", error
    pid = gw.server("bad")["pid"]

    assert _call(gw, "bad", "echo", {"text": "after"})["result"]["content"][0]["text"] == "after"
    assert gw.server("bad")["pid"] == pid  # the same process: not killed and restarted
    assert "sent a message of over 1048576 bytes" in gw.log()
