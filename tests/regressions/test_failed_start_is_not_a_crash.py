"""A stdio server that dies before answering initialize is one failed start, not also a crash.

It used to be both: the closed pipe was taken for a crash (a restart scheduled in the background,
`restarts` counted, the failure counted twice) while the start reported its own failure, so a server
that could never start spawned copies of itself and hit its attempt limit at half the configured count.
"""

from __future__ import annotations

import pytest

from gateway.config import RestartPolicy, StdioServer
from gateway.errors import UpstreamUnavailable
from gateway.events import NullObserver
from gateway.runtime import ServerState, build_runtime
from tests.support.paths import PY

pytestmark = pytest.mark.anyio


async def test_each_failed_start_counts_once_and_schedules_nothing() -> None:
    config = StdioServer(
        command=PY,
        args=["-c", "import sys; sys.exit(1)"],
        restart=RestartPolicy(max_attempts=2, backoff_initial=0.05),
    )
    runtime = build_runtime("dud", config, NullObserver(), lambda *_: None)
    reasons = []
    try:
        for _ in range(4):
            with pytest.raises(UpstreamUnavailable) as failed:
                await runtime.open_session()
            assert failed.value.data is not None
            reasons.append(failed.value.data["reason"])
            assert runtime.state is ServerState.FAILED and runtime.pid is None
            assert runtime.restarts == 0 and runtime.last_exit_reason == "start_failed"
    finally:
        await runtime.close()
    # The first start and max_attempts more, then refused without another spawn.
    assert reasons == ["start_failed", "start_failed", "start_failed", "failed"]
