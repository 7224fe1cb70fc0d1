"""When a stdio server dies on its own, what it started in its process group dies with it.

Only a stop the gateway asked for used to signal the group; after a crash the server's helpers (a
`node` under `npx`, say) lived on, re-parented to init, with nothing left to stop them.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from gateway.config import StdioServer
from gateway.upstream.stdio import StdioSession
from tests.support.processes import demo_with_helper
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_helper_of_a_killed_server_is_killed() -> None:
    session = StdioSession("demo", StdioServer(**demo_with_helper()))
    await session.start(timeout=30)
    try:
        assert session.pid is not None
        leader = psutil.Process(session.pid)
        group = [leader, *leader.children()]
        assert len(group) == 2
        os.kill(session.pid, signal.SIGKILL)
        await eventually(lambda: session.closed, what="the crash to be noticed")
        assert session.close_reason == "crash"
        _, alive = psutil.wait_procs(group, timeout=10)
        for proc in alive:
            proc.kill()
        assert not alive
    finally:
        await session.close()
