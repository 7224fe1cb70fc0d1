"""The gateway's observation points: every event metrics need passes through an `Observer`.

The gateway calls these at a few named places: a request ends (`forward`, or the aggregate when it
answers itself), a server lists its tools, starts or stops (`lifecycle`), the pool hands out or
drops a session (`pool`), a session ends. `telemetry.recorder.Recorder` implements them;
`NullObserver` records nothing. An observer must never raise into the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class StopReason(StrEnum):
    """Why a server stopped: the closed value set of the `reason` label."""

    IDLE = "idle"  # unused for idle_timeout seconds
    CRASH = "crash"  # the process exited or its pipes broke without being asked to
    SHUTDOWN = "shutdown"  # the gateway is shutting down
    MANUAL = "manual"  # an operator asked (POST /servers/{id}/stop or /restart)
    HEALTH_CHECK = "health_check"  # it stopped answering health checks
    START_FAILED = "start_failed"  # it never finished starting (spawn error, initialize failed or timed out)


class Rejection(StrEnum):
    """Why the gateway refused a client or cut it off: the closed value set of the `reason` label."""

    SESSION_LIMIT = "session_limit"  # the gateway holds limits.max_sessions client sessions
    IDENTITY_SESSIONS = "identity_sessions"  # the caller holds its limits.max_sessions_per_identity
    IDENTITY_SHARE = "identity_share"  # the caller holds its share of a shared server's request slots
    STREAM_OVERFLOW = "stream_overflow"  # a client did not read its stream past limits.max_stream_buffer_bytes
    BODY_TOO_LARGE = "body_too_large"  # a request body over limits.max_body_bytes
    UNAUTHORIZED = "unauthorized"  # no valid bearer token
    HOST = "host"  # a Host header not allowed (DNS rebinding)
    ORIGIN = "origin"  # an Origin not allowed
    CROSS_SITE = "cross_site"  # an operations request a browser could have been tricked into sending
    HEADER_MISMATCH = "header_mismatch"  # a 2026 request whose MCP headers disagree with its body (-32020)
    UNSUPPORTED_VERSION = "unsupported_version"  # a 2026 request for a version the gateway does not serve (-32022)


class Omission(StrEnum):
    """Why a server was left out of an aggregated answer on /mcp (initialize or a list)."""

    STARTING = "starting"  # still starting after limits.cold_start_wait; it keeps starting
    FAILED = "failed"  # it failed to start or to answer


class EvictionReason(StrEnum):
    """Why a pooled upstream session was dropped: the closed value set of the pool's `reason` label."""

    TTL_EXPIRED = "ttl_expired"  # older than pool.ttl
    IDLE = "idle"  # unused past pool.idle_ttl, or (stdio) the server's idle stop
    HEALTH_CHECK = "health_check"  # it failed its health check
    CIRCUIT_BREAKER = "circuit_breaker"  # idle when its server's breaker opened
    CAPACITY = "capacity"  # the least recently used idle session, dropped to make room
    UPSTREAM_CLOSED = "upstream_closed"  # the upstream ended it or died, or a call on it broke
    MANUAL = "manual"  # an operator asked (DELETE /servers/{id}/sessions, a stop or restart)
    SHUTDOWN = "shutdown"  # the gateway is shutting down


# A server's stop, as what it did to its pooled sessions; and back, when evicting a stdio session stops its process.
_EVICTION_OF_STOP = {
    StopReason.IDLE: EvictionReason.IDLE,
    StopReason.CRASH: EvictionReason.UPSTREAM_CLOSED,
    StopReason.SHUTDOWN: EvictionReason.SHUTDOWN,
    StopReason.MANUAL: EvictionReason.MANUAL,
    StopReason.HEALTH_CHECK: EvictionReason.HEALTH_CHECK,
    StopReason.START_FAILED: EvictionReason.UPSTREAM_CLOSED,
}
_STOP_OF_EVICTION = {
    EvictionReason.IDLE: StopReason.IDLE,
    EvictionReason.HEALTH_CHECK: StopReason.HEALTH_CHECK,
    EvictionReason.SHUTDOWN: StopReason.SHUTDOWN,
}


def eviction_for_stop(reason: StopReason) -> EvictionReason:
    return _EVICTION_OF_STOP[reason]


def stop_for_eviction(reason: EvictionReason) -> StopReason:
    """The stop of a server whose one session (its process) was evicted: an operator's, unless said otherwise."""
    return _STOP_OF_EVICTION.get(reason, StopReason.MANUAL)


class PoolEvent(StrEnum):
    HIT = "hit"
    MISS = "miss"
    EVICTED = "evicted"
    HEALTH_CHECK_FAILED = "health_check_failed"


@dataclass(slots=True, kw_only=True)
class RequestRecord:
    """One finished client request."""

    server_id: str  # "" when the gateway answered without an upstream
    method: str
    target: str | None  # the tool (tools/call) or prompt (prompts/get) name
    duration: float  # seconds, arrival to answer
    error_type: str | None  # an `ErrorType` value, None on success
    upstream_duration: float | None  # seconds waiting on the upstream, None if it was not asked
    protocol_version: str  # what the client negotiated
    upstream_transport: str | None  # "stdio" or "streamable-http"


class Observer(Protocol):
    def request_finished(self, record: RequestRecord) -> None: ...

    def tools_listed(self, server_id: str, names: Sequence[str], first_page: bool) -> None:
        """A server advertised these tools: the only tool names metrics will carry."""

    def server_started(self, server_id: str, start_seconds: float) -> None: ...

    def server_stopped(self, server_id: str, reason: str) -> None: ...

    def pool_event(self, server_id: str, event: str, reason: str | None = None) -> None: ...

    def pool_acquired(self, server_id: str, seconds: float) -> None:
        """How long one acquire took, hit, miss or wait."""

    def session_closed(self, side: str, seconds: float, protocol_version: str, transport: str | None) -> None:
        """A client's session with the gateway (side "server") or an upstream session ("client") ended."""

    def rejected(self, server_id: str | None, reason: str) -> None:
        """The gateway refused a client (or cut it off) by a limit or a check; `None`: no server in particular."""

    def omitted(self, server_id: str, reason: str) -> None:
        """A server was left out of an aggregated answer on /mcp."""

    def input_required(self, server_id: str, bridge: str) -> None:
        """An input-required round (`telemetry.catalog.INPUT_BRIDGES`): a 2026 server's, relayed to a 2025
        client as requests or passed to a 2026 one; or a 2025 server's question, held for a 2026 client."""

    def listening(self, server_id: str | None, opened: bool) -> None:
        """A 2026 client opened or closed a listen stream (on one server's endpoint, or on /mcp: None)."""

    def holding(self, server_id: str, held: bool) -> None:
        """A call began, or ended, waiting for a 2026 client's answer to its 2025 server's question."""


class NullObserver:
    def request_finished(self, record: RequestRecord) -> None:
        pass

    def tools_listed(self, server_id: str, names: Sequence[str], first_page: bool) -> None:
        pass

    def server_started(self, server_id: str, start_seconds: float) -> None:
        pass

    def server_stopped(self, server_id: str, reason: str) -> None:
        pass

    def pool_event(self, server_id: str, event: str, reason: str | None = None) -> None:
        pass

    def pool_acquired(self, server_id: str, seconds: float) -> None:
        pass

    def session_closed(self, side: str, seconds: float, protocol_version: str, transport: str | None) -> None:
        pass

    def rejected(self, server_id: str | None, reason: str) -> None:
        pass

    def omitted(self, server_id: str, reason: str) -> None:
        pass

    def input_required(self, server_id: str, bridge: str) -> None:
        pass

    def listening(self, server_id: str | None, opened: bool) -> None:
        pass

    def holding(self, server_id: str, held: bool) -> None:
        pass
