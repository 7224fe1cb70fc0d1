"""`completion/complete` with a `ref` that is not an object is invalid params, not an HTTP 500 (F6)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.mcp import raw_initialize, rpc
from tests.support.processes import demo_server


@pytest.mark.parametrize("ref", ["x", ["ref/prompt"], 7, None])
def test_a_ref_that_is_not_an_object(gateway_factory: Any, ref: Any) -> None:
    gw = gateway_factory({"demo": demo_server()})
    session_id = raw_initialize(gw, "/mcp")
    params = {"ref": ref, "argument": {"name": "text", "value": "a"}}
    response = rpc(
        gw, "/mcp", {"jsonrpc": "2.0", "id": 6, "method": "completion/complete", "params": params}, session_id
    )
    assert response.status_code == 200, response.text
    error = response.json()["error"]
    assert error["code"] == -32602 and "ref" in error["message"], error
    assert response.json()["id"] == 6
