"""The two MCP endpoints end to end: a real gateway process, real upstreams, the official client."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from tests.support.mcp import mcp_session
from tests.support.processes import Upstream, demo_server

pytestmark = pytest.mark.anyio


def _text(result: Any) -> str:
    return str(result.content[0].text)


async def test_aggregate_lists_and_routes_across_servers(gateway_factory: Any, http_upstream: Upstream) -> None:
    gw = gateway_factory({"demo": demo_server(), "remote": {"url": http_upstream.url}})
    async with mcp_session(gw.url()) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert {"demo__echo", "demo__add", "remote__echo", "remote__whoami"} <= tools
        assert _text(await session.call_tool("demo__add", {"a": 2, "b": 3})) == "5"
        assert _text(await session.call_tool("remote__echo", {"text": "via http"})) == "via http"
        prompts = {prompt.name for prompt in (await session.list_prompts()).prompts}
        assert {"demo__greet", "remote__summarize"} <= prompts
        greeting = await session.get_prompt("demo__greet", {"name": "Ada"})
        assert "Ada" in greeting.messages[0].content.text  # type: ignore[union-attr]
        uris = {str(resource.uri) for resource in (await session.list_resources()).resources}
        assert {"demo://readme", "upstream://info"} <= uris
        info = await session.read_resource("upstream://info")
        assert info.contents
        templates = (await session.list_resource_templates()).resource_templates
        assert any(t.uri_template == "demo://echo/{text}" for t in templates)
        echoed = await session.read_resource("demo://echo/hello")
        assert "hello" in echoed.contents[0].text  # type: ignore[union-attr]
        await session.send_ping()


async def test_per_server_endpoint_passes_through(gateway_factory: Any, http_upstream: Upstream) -> None:
    gw = gateway_factory({"demo": demo_server(), "remote": {"url": http_upstream.url}})
    async with mcp_session(gw.url("remote")) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert "whoami" in tools and "demo__echo" not in tools
        who = await session.call_tool("whoami", {})
        # The upstream offers 2026-07-28, so the gateway speaks it: no upstream session.
        assert who.structured_content is not None and who.structured_content["protocol_version"] == "2026-07-28"
        assert who.structured_content["session_id"] is None
    async with mcp_session(gw.url("demo")) as session:
        steps: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            steps.append(progress)

        result = await session.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
        assert _text(result) == "completed 3 steps"
        assert steps == [1.0, 2.0, 3.0]
        failed = await session.call_tool("fail", {"message": "boom"})
        assert failed.is_error


async def test_concurrent_clients_get_their_own_answers(gateway_factory: Any, http_upstream: Upstream) -> None:
    """50 clients x mixed calls on two upstreams: every id comes back to its sender with its result."""
    gw = gateway_factory({"demo": demo_server(), "remote": {"url": http_upstream.url}})
    failures: list[str] = []

    async def client(n: int) -> None:
        async with mcp_session(gw.url()) as session:
            for i in range(6):
                server = "demo" if (n + i) % 2 else "remote"
                if i % 3 == 0:
                    result = await session.call_tool(f"{server}__add", {"a": n, "b": i})
                    expected = str(n + i)
                else:
                    text = f"client {n} call {i}"
                    result = await session.call_tool(f"{server}__echo", {"text": text})
                    expected = text
                if _text(result) != expected:
                    failures.append(f"client {n} call {i}: {_text(result)!r} != {expected!r}")

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for n in range(50):
                group.start_soon(client, n)
    assert failures == []
