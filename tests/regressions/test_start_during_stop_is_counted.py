"""A request that arrives while its server is stopping waits for the stop, then starts it afresh.

It used to start a second process while the first was still being stopped; the stop then found the
state "starting", so it was never counted in `mcp_gateway_server_stops_total`, and for a moment
two processes of one server were alive.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from tests.support.mcp import mcp_session
from tests.support.metrics import scrape
from tests.support.processes import misbehaving_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_a_call_during_an_idle_stop_waits_and_both_events_are_counted(gateway_factory: Any) -> None:
    # Stubborn: it ignores SIGTERM and the end of stdin, so its stop takes the whole grace period.
    stubborn = misbehaving_server(lazy=False, idle_timeout=0.2, env={"MISBEHAVING_STUBBORN": "1"})
    gw = gateway_factory({"odd": stubborn})
    first_pid = gw.server("odd")["pid"]
    await eventually(lambda: gw.server("odd")["state"] == "stopping", what="the idle stop to begin")
    async with mcp_session(gw.url("odd")) as session:
        with anyio.fail_after(60):
            echoed = await session.call_tool("echo", {"text": "after the stop"})
    assert echoed.content[0].text == "after the stop"  # type: ignore[union-attr]
    server = gw.server("odd")
    assert server["state"] == "running" and server["pid"] != first_pid
    metrics = scrape(gw)
    assert metrics.value("mcp_gateway_server_stops_total", server_id="odd", reason="idle") == 1
    assert metrics.value("mcp_gateway_server_starts_total", server_id="odd") == 2
