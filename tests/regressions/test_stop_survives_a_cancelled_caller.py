"""A stop whose caller is cancelled halfway still stops the process, and a later stop waits for it.

The idle sweeper is cancelled when the gateway shuts down. If it was stopping a slow server at that
moment, the half-done stop was abandoned, and the shutdown's own stop, finding no process attached,
returned at once: the server outlived the gateway.
"""

from __future__ import annotations

import asyncio

import anyio
import psutil
import pytest

from gateway.config import StdioServer
from gateway.events import NullObserver, StopReason
from gateway.runtime import ServerState, build_runtime
from tests.support.processes import misbehaving_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_shutdown_during_a_cancelled_idle_stop_stops_the_server() -> None:
    # Stubborn: ignores SIGTERM and the end of stdin, so stopping it takes the whole close sequence.
    config = StdioServer(**misbehaving_server(env={"MISBEHAVING_STUBBORN": "1"}))
    runtime = build_runtime("odd", config, NullObserver(), lambda *_: None)
    await runtime.open_session()
    assert runtime.pid is not None
    process = psutil.Process(runtime.pid)
    try:
        idle_stop = asyncio.create_task(runtime.stop(StopReason.IDLE))
        await eventually(lambda: runtime.state is ServerState.STOPPING, 10, "the stop to begin")
        idle_stop.cancel()
        with anyio.fail_after(30):
            await runtime.close()
        assert runtime.state is ServerState.STOPPED
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    finally:
        if process.is_running():
            process.kill()
