"""A stdio server that closes its stdout but keeps running can never answer again.

The gateway used to wait on the process for ever: calls in flight hung until their timeout and the
server was never restarted. Now EOF on stdout gives it a moment to exit, then kills it.

On uvloop, asyncio's subprocess support left duplicates of the child's stdout open in the child, so
EOF never came until it exited: children are spawned by `Popen` now, and this runs on both loops.
"""

from __future__ import annotations

from typing import Any

import anyio
import psutil
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.mcp import mcp_session
from tests.support.processes import misbehaving_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_closed_stdout_fails_the_call_and_restarts_the_server(gateway_factory: Any, loop: str) -> None:
    gw = gateway_factory({"odd": misbehaving_server(lazy=False, request_timeout=120)}, args=("--loop", loop))
    assert f"event loop: {loop}" in gw.log()
    first_pid = gw.server("odd")["pid"]
    async with mcp_session(gw.url("odd")) as session:
        with anyio.fail_after(60), pytest.raises(MCPError) as failed:  # far below the request timeout
            await session.call_tool("mute", {})
        assert "closed its stdout but kept running" in str(failed.value)
        await eventually(
            lambda: not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == "zombie",
            what="the muted server to be killed",
        )
        server = await eventually(
            lambda: (s := gw.server("odd"))["state"] == "running" and s["pid"] != first_pid and s, what="a restart"
        )
        assert server["last_exit_reason"] == "crash"
        echoed = await session.call_tool("echo", {"text": "back"})
        assert echoed.content[0].text == "back"  # type: ignore[union-attr]
