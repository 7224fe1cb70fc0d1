"""What `/mcp` adds over a proxy: pagination across servers, re-announced list changes, routed completions."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import types

from tests.support.mcp import mcp_session
from tests.support.processes import demo_server, misbehaving_server

pytestmark = pytest.mark.anyio


async def test_pages_follow_upstream_cursors_and_paginate_the_merged_list(gateway_factory: Any) -> None:
    # odd pages its tools 3 at a time; the gateway itself pages by 4.
    gw = gateway_factory({"demo": demo_server(), "odd": misbehaving_server()}, {"limits": {"page_size": 4}})
    async with mcp_session(gw.url()) as session:
        names: list[str] = []
        pages = 0
        cursor = None
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            pages += 1
            assert len(page.tools) <= 4
            names += [tool.name for tool in page.tools]
            cursor = page.next_cursor
            if not cursor:
                break
    odd = {name for name in names if name.startswith("odd__")}
    assert {"odd__echo", "odd__garbage", "odd__crash", "odd__hang", "odd__announce", "odd__cancelled"} <= odd
    assert {"demo__echo", "demo__add", "demo__sleep", "demo__fail", "demo__progress"} <= set(names)
    assert len(names) == len(set(names)) and pages == -(-len(names) // 4)
    # Through the per-server endpoint the upstream's own pages pass through as they are.
    async with mcp_session(gw.url("odd")) as session:
        first = await session.list_tools()
        assert len(first.tools) == 3 and first.next_cursor == "3"


async def test_upstream_list_changed_is_re_announced(gateway_factory: Any) -> None:
    gw = gateway_factory({"odd": misbehaving_server(), "demo": demo_server()})
    heard: dict[str, anyio.Event] = {"aggregate": anyio.Event(), "odd": anyio.Event()}

    def handler_for(name: str) -> Any:
        async def handle(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                heard[name].set()

        return handle

    async with (
        mcp_session(gw.url(), message_handler=handler_for("aggregate")) as aggregate,
        mcp_session(gw.url("odd"), message_handler=handler_for("odd")) as direct,
    ):
        await aggregate.list_tools()
        await direct.list_tools()
        with anyio.fail_after(30):
            # The client's GET stream may open a moment after initialize: announce until heard.
            while not (heard["aggregate"].is_set() and heard["odd"].is_set()):
                await aggregate.call_tool("odd__announce", {})
                with anyio.move_on_after(1):
                    await heard["aggregate"].wait()
                    await heard["odd"].wait()


async def test_completion_is_routed_to_the_prompts_owner(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_server(), "odd": misbehaving_server()})
    async with mcp_session(gw.url()) as session:
        await session.list_prompts()
        completed = await session.complete(
            types.PromptReference(type="ref/prompt", name="demo__greet"), {"name": "name", "value": "G"}
        )
    assert completed.completion.values == ["Grace", "Guido"]
