"""A write to a pipe (or socket) nobody reads must raise in the gateway, never kill it.

`serve` used to restore SIGPIPE's default action (terminate) before starting. A stdio server that
exited before the gateway's first write, like one that fails at once, then took the whole gateway
down with every client's session, silently: seen once in CI as a gateway that vanished mid-test.
Python ignores SIGPIPE, so such a write raises BrokenPipeError, which the stdio transport reports
as a failed start or a crash. Whether the write or the event loop's hang-up notice comes first is
a race, so this checks the cause: the running gateway ignores SIGPIPE.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from tests.support.processes import demo_server


def _ignored(pid: int) -> set[int]:
    """The signals a process ignores, from the SigIgn mask in /proc."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    mask = int(next(line.split()[1] for line in lines if line.startswith("SigIgn:")), 16)
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


def test_the_gateway_ignores_sigpipe(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_server(lazy=False)})
    assert signal.SIGPIPE in _ignored(gw.proc.pid)
