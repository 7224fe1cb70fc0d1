"""Every configured server's runtime, together: built from the config, started at boot when eager,
stopped when idle, shut down with the gateway. Each server's own life is its runtime's
(`gateway/runtime.py`); this module runs what concerns them all.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.config import Config
from gateway.events import Observer, StopReason
from gateway.runtime import Clock, NotificationSink, ServerState, build_runtime

log = logging.getLogger(__name__)


class Lifecycle:
    """All servers' runtimes, boot-time starts and the idle sweeper."""

    def __init__(
        self, config: Config, observer: Observer, on_notification: NotificationSink, clock: Clock = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock
        limit = config.gateway.limits.max_upstream_message_bytes
        self.servers = {
            server_id: build_runtime(server_id, server, observer, on_notification, clock, limit)
            for server_id, server in config.servers.items()
        }
        self._sweeper: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        eager = [runtime for runtime in self.servers.values() if not runtime.config.lazy]
        results = await asyncio.gather(*(runtime.boot() for runtime in eager), return_exceptions=True)
        for runtime, result in zip(eager, results, strict=True):
            if isinstance(result, BaseException):
                log.error("server %s did not start at boot: %s", runtime.id, result)
        if any(runtime.idle_timeout for runtime in self.servers.values()):
            self._sweeper = asyncio.create_task(self._sweep_idle(), name="idle-sweeper")

    async def _sweep_idle(self) -> None:
        timeouts = [runtime.idle_timeout for runtime in self.servers.values() if runtime.idle_timeout]
        tick = max(0.05, min(1.0, min(timeouts) / 4))
        while True:
            await asyncio.sleep(tick)
            now = self.clock()
            for runtime in self.servers.values():
                timeout = runtime.idle_timeout
                idle = runtime.state is ServerState.RUNNING and runtime.in_flight == 0
                if timeout and idle and now - runtime.last_used > timeout:
                    await runtime.stop(StopReason.IDLE)

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(*(runtime.close() for runtime in self.servers.values()), return_exceptions=True)
