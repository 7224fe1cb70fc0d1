"""The gateway's observation points: every event metrics need passes through an `Observer`.

The gateway calls these at a few named places (a request ends, a server starts or stops, the pool
hands out or drops a session). `telemetry` implements them; `NullObserver` records nothing. An
observer must never raise into the gateway: failures are the observer's to log and swallow.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from gateway.errors import ErrorType


class StopReason(StrEnum):
    """Why a server stopped: the closed value set of the `reason` label."""

    IDLE = "idle"  # unused for idle_timeout seconds
    CRASH = "crash"  # the process exited or its pipes broke without being asked to
    SHUTDOWN = "shutdown"  # the gateway is shutting down
    MANUAL = "manual"  # an operator asked (POST /servers/{id}/stop or /restart)
    HEALTH_CHECK = "health_check"  # it stopped answering health checks
    START_FAILED = "start_failed"  # it never finished starting (spawn error, initialize failed or timed out)


class PoolEvent(StrEnum):
    HIT = "hit"
    MISS = "miss"
    EVICTED = "evicted"


class Observer(Protocol):
    def request_finished(
        self, server_id: str, method: str, tool: str | None, duration: float, error_type: ErrorType | None
    ) -> None:
        """One downstream request ended; `error_type` is None on success."""

    def server_started(self, server_id: str, start_seconds: float) -> None: ...

    def server_stopped(self, server_id: str, reason: StopReason) -> None: ...

    def pool_event(self, server_id: str, event: PoolEvent, reason: str | None = None) -> None: ...


class NullObserver:
    def request_finished(
        self, server_id: str, method: str, tool: str | None, duration: float, error_type: ErrorType | None
    ) -> None:
        pass

    def server_started(self, server_id: str, start_seconds: float) -> None:
        pass

    def server_stopped(self, server_id: str, reason: StopReason) -> None:
        pass

    def pool_event(self, server_id: str, event: PoolEvent, reason: str | None = None) -> None:
        pass
