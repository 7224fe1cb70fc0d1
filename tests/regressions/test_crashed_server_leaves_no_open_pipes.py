"""A stdio server that crashes leaves none of its pipes open in the gateway.

On uvloop, the stdout and stderr pipes of a crashed server stayed open: its read transports keep
a pipe open after EOF unless the protocol says otherwise, and only a stop the gateway asked for
closed them. A crash-looping server leaked two descriptors per crash until the gateway ran out.
"""

from __future__ import annotations

import functools
import os
import signal
from typing import Any

import pytest

from tests.support.processes import misbehaving_server
from tests.support.waiting import wait_for

CRASHES = 10


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_crash_loop_leaks_no_descriptors(gateway_factory: Any, loop: str) -> None:
    restart = {"backoff_initial": 0.05, "backoff_max": 0.1, "max_attempts": 100, "window": 1}
    gw = gateway_factory({"odd": misbehaving_server(lazy=False, restart=restart)}, args=("--loop", loop))

    def descriptors() -> int:
        return len(os.listdir(f"/proc/{gw.proc.pid}/fd"))

    def restarted(after: int) -> bool:
        server = gw.server("odd")
        return bool(server["state"] == "running" and server["pid"] != after)

    before = descriptors()
    for _ in range(CRASHES):
        pid = gw.server("odd")["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(functools.partial(restarted, pid), what="the server to be restarted")
    assert gw.server("odd")["restarts"] == CRASHES
    # Closing happens on the event loop just after the restart is visible: wait for it to settle.
    wait_for(lambda: descriptors() <= before, what=f"the gateway back to {before} open descriptors")
