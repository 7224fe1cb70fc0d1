"""A server's `requestState` through the gateway: sealed to the caller, server and method it was issued for."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.errors import GatewayError
from gateway.mrtr import StateSealer
from tests.support.metrics import scrape
from tests.support.paths import PY, REPO
from tests.support.processes import Gateway

TOKEN_A, TOKEN_B = "tok-A-2f1b6c0e9d7a4c31", "tok-B-8a5d3e2f1c0b9a47"


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _refusal(call: Any) -> str:
    with pytest.raises(GatewayError) as caught:
        call()
    assert caught.value.code == -32602
    assert caught.value.data is not None
    return str(caught.value.data["reason"])


@pytest.mark.fast
def test_a_sealed_state_opens_only_for_its_caller_server_and_method_until_it_expires() -> None:
    clock = _Clock()
    sealer = StateSealer(b"k" * 32, ttl=60, clock=clock)
    token = sealer.seal("the server's state", "alice", "srv", "tools/call")
    assert "the server's state" not in token
    assert sealer.open(token, "alice", "srv", "tools/call") == "the server's state"
    assert _refusal(lambda: sealer.open(token, "bob", "srv", "tools/call")) == "state_foreign"
    assert _refusal(lambda: sealer.open(token, "alice", "other", "tools/call")) == "state_foreign"
    assert _refusal(lambda: sealer.open(token, "alice", "srv", "prompts/get")) == "state_foreign"
    assert _refusal(lambda: sealer.open("made-up", "alice", "srv", "tools/call")) == "state_foreign"
    assert _refusal(lambda: sealer.open(None, "alice", "srv", "tools/call")) == "state_foreign"
    body, mac = token.rsplit(".", 1)
    altered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    assert _refusal(lambda: sealer.open(altered, "alice", "srv", "tools/call")) == "state_tampered"
    assert sealer.peek(token) == "the server's state" and sealer.peek(altered) is None and sealer.peek(7) is None
    other_replica = StateSealer(b"j" * 32, clock=clock)
    assert _refusal(lambda: other_replica.open(token, "alice", "srv", "tools/call")) == "state_tampered"
    assert StateSealer(b"k" * 32, clock=clock).open(token, "alice", "srv", "tools/call") == "the server's state"
    clock.now += 61
    assert _refusal(lambda: sealer.open(token, "alice", "srv", "tools/call")) == "state_expired"


ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
}
TOOL = "test_input_required_result_request_state"


def _call(gw: Gateway, token: str, request_id: int, **extra: Any) -> dict[str, Any]:
    params = {"name": TOOL, "arguments": {}, "_meta": ENVELOPE, **extra}
    message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": TOOL,
    }
    response = httpx.post(gw.url("conf"), content=json.dumps(message), headers=headers, timeout=30)
    answer: dict[str, Any] = response.json()
    assert answer["id"] == request_id, answer
    return answer


def test_the_servers_request_state_is_sealed_to_the_caller(gateway_factory: Any) -> None:
    server = {"command": PY, "args": ["-m", "tests.servers.conformance_server", "--transport", "stdio"]}
    gw = gateway_factory({"conf": {**server, "cwd": str(REPO)}}, {"auth": {"tokens": [TOKEN_A, TOKEN_B]}})
    first = _call(gw, TOKEN_A, 1)["result"]
    assert first["resultType"] == "input_required" and set(first["inputRequests"]) == {"confirm"}
    sealed = first["requestState"]
    assert sealed.startswith("mcpgw1.") and "awaiting-confirmation" not in sealed
    answers = {"confirm": {"action": "accept", "content": {"ok": True}}}
    stolen = _call(gw, TOKEN_B, 2, inputResponses=answers, requestState=sealed)
    assert stolen["error"]["data"]["reason"] == "state_foreign", stolen
    tampered = _call(
        gw, TOKEN_A, 3, inputResponses=answers, requestState=sealed[:-1] + ("0" if sealed[-1] != "0" else "1")
    )
    assert tampered["error"]["data"]["reason"] == "state_tampered", tampered
    done = _call(gw, TOKEN_A, 4, inputResponses=answers, requestState=sealed)["result"]
    assert done["resultType"] == "complete"
    assert done["content"][0]["text"].startswith("state-ok"), done
    rounds = scrape(gw).total("mcp_gateway_input_required_rounds_total", server_id="conf", bridge="passed")
    assert rounds == 1  # the refused retries never reached the server
