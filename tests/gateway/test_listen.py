"""`subscriptions/listen` through the gateway: fed by what servers announce, in both eras, on both endpoints."""

from __future__ import annotations

import json
import threading
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

from tests.support.mcp import mcp_session
from tests.support.metrics import scrape
from tests.support.paths import PY, REPO
from tests.support.processes import Gateway

pytestmark = pytest.mark.anyio

ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"


def _conformance(modern_only: bool = True) -> dict[str, Any]:
    """The fixture server over stdio: a server of 2026-07-28 announcing list changes on its listen stream."""
    flags = ["--modern-only"] if modern_only else []
    args = ["-m", "tests.servers.conformance_server", "--transport", "stdio", *flags]
    return {"command": PY, "args": args, "cwd": str(REPO), "lazy": False}


@pytest.mark.parametrize(("path", "prefix"), [("/servers/conf/mcp", ""), ("/mcp", "conf__")])
async def test_a_2026_client_hears_what_it_asked_for(gateway_factory: Any, path: str, prefix: str) -> None:
    gw = gateway_factory({"conf": _conformance()})
    url = gw.base + path
    async with (
        Client(url, mode="2026-07-28") as listening,
        Client(url, mode="2026-07-28") as acting,
        listening.listen(prompts_list_changed=True) as prompts_only,
        listening.listen(tools_list_changed=True) as tools_only,
    ):
        assert prompts_only.honored.prompts_list_changed and not prompts_only.honored.tools_list_changed
        await acting.call_tool(f"{prefix}test_trigger_tool_change", {})
        await acting.call_tool(f"{prefix}test_trigger_prompt_change", {})
        with anyio.fail_after(30):
            async for event in tools_only:
                assert type(event).__name__ == "ToolsListChanged", event
                break
            async for event in prompts_only:  # the tool change was not sent here: it did not ask
                assert type(event).__name__ == "PromptsListChanged", event
                break


async def test_a_2025_client_hears_a_2026_servers_changes(gateway_factory: Any) -> None:
    """The server's listen stream also feeds the GET streams of 2025 sessions."""
    gw = gateway_factory({"conf": _conformance()})
    heard = anyio.Event()

    async def on_message(message: Any) -> None:
        if getattr(getattr(message, "root", message), "method", None) == "notifications/tools/list_changed":
            heard.set()

    async with mcp_session(gw.url("conf"), message_handler=on_message) as session:
        with anyio.fail_after(30):
            # The client opens its GET stream on its own, a moment after initialize: change until one is heard.
            while not heard.is_set():
                await session.call_tool("test_trigger_tool_change", {})
                with anyio.move_on_after(1):
                    await heard.wait()


def _listen_post(
    gw: Gateway, path: str, notifications: Any, accept: str = "application/json, text/event-stream"
) -> Any:
    params: dict[str, Any] = {"_meta": ENVELOPE}
    if notifications is not None:
        params["notifications"] = notifications
    message = {"jsonrpc": "2.0", "id": 77, "method": "subscriptions/listen", "params": params}
    headers = {
        **gw.headers,
        "Accept": accept,
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "subscriptions/listen",
    }
    return httpx.post(gw.base + path, content=json.dumps(message), headers=headers, timeout=30)


def test_a_listen_request_that_is_wrong_is_told_so(gateway_factory: Any) -> None:
    gw = gateway_factory({"conf": _conformance()})
    malformed: list[Any] = [None, [], {"toolsListChanged": "yes"}, {"resourceSubscriptions": "file:///a"}]
    for bad in malformed:
        response = _listen_post(gw, "/servers/conf/mcp", bad)
        assert response.status_code == 400, response.text
        assert response.json()["id"] == 77 and response.json()["error"]["code"] == -32602
    refused = _listen_post(gw, "/mcp", {"toolsListChanged": True}, accept="application/json")
    assert refused.status_code == 406, refused.text


def test_a_listen_stream_ends_with_its_response_when_the_gateway_drains(gateway_factory: Any) -> None:
    gw = gateway_factory({"conf": _conformance()})
    events: list[dict[str, Any]] = []
    acknowledged = threading.Event()

    def listen() -> None:
        message = {
            "jsonrpc": "2.0",
            "id": "s-1",
            "method": "subscriptions/listen",
            "params": {
                "_meta": ENVELOPE,
                "notifications": {"toolsListChanged": True, "resourceSubscriptions": ["x:/"]},
            },
        }
        headers = {
            **gw.headers,
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "subscriptions/listen",
        }
        with httpx.stream("POST", gw.url(), content=json.dumps(message), headers=headers, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    acknowledged.set()

    reader = threading.Thread(target=listen)
    reader.start()
    assert acknowledged.wait(30)
    assert scrape(gw).total("mcp_gateway_listen_streams", server_id="_gateway") == 1
    gw.stop()
    reader.join(30)
    assert not reader.is_alive()
    ack, *_, last = events
    assert ack["method"] == "notifications/subscriptions/acknowledged"
    # What the gateway honours: the tool list, not resource subscriptions (not carried yet).
    assert ack["params"] == {"_meta": {SUBSCRIPTION: "s-1"}, "notifications": {"toolsListChanged": True}}
    assert last == {"jsonrpc": "2.0", "id": "s-1", "result": {"resultType": "complete", "_meta": {SUBSCRIPTION: "s-1"}}}
