"""Pooled upstream MCP sessions: reuse, expiry, health checks and circuit breaking, all observable.

A pooled session is one initialized MCP session with one upstream: an `Mcp-Session-Id` for a
streamable-HTTP server, the process itself for a stdio server (stdio carries exactly one
session). Sessions are keyed by (server, caller identity) and never shared across identities,
unless the server sets `pool.share_sessions` (stdio servers always share their one process; see
docs/session-pool.md). A session carries up to `max_requests_per_session` concurrent requests of
its key: MCP multiplexes by request id, so the common case is one session per key.

Acquire takes the least loaded live session of the key (a hit), else creates one (a miss) while
the key and the server are under their maximums, making room by evicting the least recently used
idle session of another key (`capacity`), else waits up to `acquire_timeout`. Every eviction has a
reason from a closed set and closes its session. A breaker per server opens after
`failure_threshold` consecutive failures to create or health-check a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from gateway.config import PoolConfig, StdioServer, fair_share
from gateway.errors import CircuitOpen, GatewayError, IdentityShare, PoolExhausted
from gateway.events import Observer, PoolEvent, Rejection, StopReason
from gateway.lifecycle import ServerRuntime
from gateway.upstream.base import UpstreamSession

log = logging.getLogger(__name__)

Clock = Callable[[], float]
SHARED = ""  # the identity of a session every caller may use

# What a server stop means for its stdio session, as an eviction reason.
_STOP_EVICTIONS = {
    StopReason.IDLE: "idle",
    StopReason.CRASH: "upstream_closed",
    StopReason.SHUTDOWN: "shutdown",
    StopReason.MANUAL: "manual",
    StopReason.HEALTH_CHECK: "health_check",
}


_EVICTION_STOPS = {
    "idle": StopReason.IDLE,
    "health_check": StopReason.HEALTH_CHECK,
    "shutdown": StopReason.SHUTDOWN,
    "manual": StopReason.MANUAL,
}


class CircuitState(IntEnum):
    """The value of `mcp_session_pool_circuit_state`."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(eq=False)
class Lease:
    """One pooled session and its bookkeeping; what `acquire` hands out and `release` takes back."""

    session: UpstreamSession
    server_id: str
    identity: str
    created: float
    last_used: float
    in_use: int = 0
    retiring: bool = False  # evicted while in use: closed when its last request ends
    reason: str = ""

    @property
    def idle(self) -> bool:
        return self.in_use == 0


@dataclass
class Breaker:
    threshold: int
    cooldown: float
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def admit(self, now: float) -> bool:
        """May a new session be created now? In half-open state, exactly one probe may."""
        if self.state is CircuitState.OPEN and now - self.opened_at >= self.cooldown:
            self.state = CircuitState.HALF_OPEN
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.state, self.failures, self.probing = CircuitState.CLOSED, 0, False

    def failed(self, now: float) -> bool:
        """Count a failure; True when it opens the breaker."""
        self.failures += 1
        self.probing = False
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.threshold:
            opening = self.state is not CircuitState.OPEN
            self.state, self.opened_at = CircuitState.OPEN, now
            return opening
        return False


@dataclass
class _Server:
    runtime: ServerRuntime
    config: PoolConfig
    breaker: Breaker
    share: int  # concurrent requests one caller may have on the server's shared sessions
    leases: dict[str, list[Lease]] = field(default_factory=dict)
    retiring: set[Lease] = field(default_factory=set)  # evicted, their last requests still running
    pending: dict[str, asyncio.Future[Lease]] = field(default_factory=dict)
    creating: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    held: Counter[str] = field(default_factory=Counter)  # requests in flight per caller, on shared sessions

    @property
    def size(self) -> int:
        return sum(len(leases) for leases in self.leases.values()) + self.creating

    @property
    def stdio(self) -> bool:
        """A stdio server: its one process is its one session, shared by every caller."""
        return isinstance(self.runtime.config, StdioServer)

    @property
    def per_key(self) -> int:
        """Sessions one key may have: a stdio server has one process."""
        return 1 if self.stdio else self.config.max_sessions_per_key

    @property
    def slots(self) -> int:
        """Concurrent requests the server's shared sessions can carry, all callers together."""
        return self.per_key * self.config.max_requests_per_session


class SessionPool:
    def __init__(self, observer: Observer, clock: Clock = time.monotonic, identities: int = 1) -> None:
        self.observer = observer
        self.clock = clock
        self.identities = identities  # callers that can tell themselves apart: their default share
        self._servers: dict[str, _Server] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def add(self, runtime: ServerRuntime) -> None:
        config = runtime.config.pool
        server = _Server(runtime, config, Breaker(config.failure_threshold, config.cooldown), share=0)
        server.share = config.max_requests_per_identity or fair_share(server.slots, self.identities)
        self._servers[runtime.id] = server
        runtime.stop_listeners.append(self.server_stopped)

    def _key(self, server: _Server, identity: str) -> str:
        return SHARED if server.config.share_sessions or server.stdio else identity

    # -- acquire and release --------------------------------------------------------------------

    async def acquire(self, runtime: ServerRuntime, identity: str) -> Lease:
        """A session for this caller; pair every acquire with `release` (the same identity)."""
        started = self.clock()
        server = self._servers[runtime.id]
        try:
            lease = await self._acquire(server, identity)
        finally:
            self.observer.pool_acquired(runtime.id, self.clock() - started)
        lease.in_use += 1
        runtime.in_flight += 1
        return lease

    async def _acquire(self, server: _Server, identity: str) -> Lease:
        """Take a session, or wait for one up to `acquire_timeout`. On a shared session a caller waits
        at its share of the slots too, so one caller's slow calls cannot take them all."""
        key = self._key(server, identity)
        shared = self._shares(server, key, identity)
        deadline = self.clock() + server.config.acquire_timeout
        while True:
            over_share = shared and server.held[identity] >= server.share
            if not over_share:
                if shared:
                    server.held[identity] += 1  # reserved before any wait, so concurrent callers count
                try:
                    lease = await self._take(server, key)
                except BaseException:
                    self._unhold(server, identity if shared else None)
                    raise
                if lease is not None:
                    return lease
                self._unhold(server, identity if shared else None)
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise self._exhausted(server, identity, over_share)
            server.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.changed.wait(), remaining)

    async def _take(self, server: _Server, key: str) -> Lease | None:
        """A session of the key now: a live one (hit), a new one (miss), or None when none can be had."""
        config = server.config
        while True:
            lease = self._pick(server, key)
            if lease is not None:
                if lease.idle and self._check_due(server, lease) and not await self._healthy(server, lease):
                    continue
                self.observer.pool_event(server.runtime.id, PoolEvent.HIT)
                return lease
            pending = server.pending.get(key)
            if pending is not None and not pending.done():  # a done one would be awaited without yielding
                # Someone is creating this key's session: share it rather than open a second one.
                await asyncio.shield(pending)
                continue
            may_add = len(server.leases.get(key, ())) < server.per_key
            fits = server.size < config.max_sessions
            victim = None if fits or not may_add else self._least_recently_used(server)
            if not may_add or not (fits or victim is not None):
                return None
            self._admit(server)  # before anything is evicted for it: an open breaker fails fast
            if victim is not None:
                self._evict(server, victim, "capacity")
            creation = asyncio.ensure_future(self._create(server, key))
            server.pending[key] = creation
            try:
                lease = await asyncio.shield(creation)
            finally:
                if server.pending.get(key) is creation:
                    del server.pending[key]
            self.observer.pool_event(server.runtime.id, PoolEvent.MISS)
            return lease

    @staticmethod
    def _shares(server: _Server, key: str, identity: str) -> bool:
        """Whether this caller's requests count against its share: on a shared session that has one."""
        return key == SHARED and identity != SHARED and server.share < server.slots

    @staticmethod
    def _unhold(server: _Server, identity: str | None) -> None:
        if identity is not None:
            server.held[identity] -= 1
            if server.held[identity] <= 0:
                del server.held[identity]

    def _exhausted(self, server: _Server, identity: str, over_share: bool) -> PoolExhausted:
        config, server_id = server.config, server.runtime.id
        if over_share:
            self.observer.rejected(server_id, Rejection.IDENTITY_SHARE)
            return IdentityShare(
                f"no session for server {server_id!r} within {config.acquire_timeout:g}s: this caller has "
                f"{server.held[identity]} requests in flight on it, its share of the server's shared session "
                "(pool.max_requests_per_identity)",
                data={"server": server_id, "reason": "identity_share", "share": server.share},
            )
        return PoolExhausted(
            f"no session for server {server_id!r} within {config.acquire_timeout:g}s: "
            f"{server.size} of {config.max_sessions} sessions, all busy",
            data={"server": server_id, "reason": "pool_exhausted"},
        )

    def _pick(self, server: _Server, key: str) -> Lease | None:
        """The least loaded usable session of the key; expired and dead ones are evicted on sight."""
        best: Lease | None = None
        now = self.clock()
        for lease in list(server.leases.get(key, ())):
            if expired := self._expiry(server, lease, now):
                self._evict(server, lease, expired)
            elif lease.in_use < server.config.max_requests_per_session and (best is None or lease.in_use < best.in_use):
                best = lease
        return best

    def _expiry(self, server: _Server, lease: Lease, now: float) -> str | None:
        """Why a pooled session must go now, if it must: dead, past its TTL, or idle past `idle_ttl`.

        A stdio session's age and idleness are its server's business (`idle_timeout`), not the pool's.
        """
        if lease.session.closed:
            return "upstream_closed"
        if server.stdio:
            return None
        ttl, idle_ttl = server.config.ttl, server.config.idle_ttl
        if ttl and now - lease.created > ttl:
            return "ttl_expired"
        if idle_ttl and lease.idle and now - lease.last_used > idle_ttl:
            return "idle"
        return None

    def _check_due(self, server: _Server, lease: Lease) -> bool:
        interval = server.config.health_check_interval
        return bool(interval) and self.clock() - lease.last_used > interval

    async def _healthy(self, server: _Server, lease: Lease) -> bool:
        """Ping a session that sat idle; a failure evicts it and counts against the breaker."""
        lease.in_use += 1  # nobody else takes it while it is being checked
        try:
            ping = {"jsonrpc": "2.0", "id": "health", "method": "ping"}
            response = await lease.session.request(ping, timeout=server.config.health_check_timeout)
            ok = "result" in response
        except GatewayError:
            ok = False
        finally:
            lease.in_use -= 1
        if ok:
            lease.last_used = self.clock()
            return True
        log.warning("server %s: a pooled session failed its health check", server.runtime.id)
        self.observer.pool_event(server.runtime.id, PoolEvent.HEALTH_CHECK_FAILED)
        self._evict(server, lease, "health_check")
        if server.breaker.failed(self.clock()):
            self._open_breaker(server)
        return False

    @staticmethod
    def _least_recently_used(server: _Server) -> Lease | None:
        """The idle session to evict when the server is at `max_sessions` and a new one is needed."""
        idle = [lease for leases in server.leases.values() for lease in leases if lease.idle]
        return min(idle, key=lambda lease: lease.last_used) if idle else None

    def _admit(self, server: _Server) -> None:
        """May a session be created now? In half-open state this one creation is the probe."""
        if not server.breaker.admit(self.clock()):
            raise CircuitOpen(
                f"server {server.runtime.id!r} is failing: its circuit breaker is open for "
                f"{server.config.cooldown:g}s after {server.breaker.failures} failures",
                data={"server": server.runtime.id, "reason": "circuit_open"},
            )

    async def _create(self, server: _Server, key: str) -> Lease:
        runtime = server.runtime
        server.creating += 1
        try:
            session = await runtime.open_session()
        except GatewayError:
            if server.breaker.failed(self.clock()):
                self._open_breaker(server)
            raise
        except BaseException:
            server.breaker.probing = False
            raise
        finally:
            server.creating -= 1
            server.changed.set()
        server.breaker.succeeded()
        session.identity = key
        now = self.clock()
        existing = next((lease for lease in server.leases.get(key, ()) if lease.session is session), None)
        if existing is not None:  # a stdio server's one process, already pooled
            return existing
        lease = Lease(session, runtime.id, key, now, now)
        server.leases.setdefault(key, []).append(lease)
        return lease

    def release(self, runtime: ServerRuntime, lease: Lease, *, identity: str, failed: bool = False) -> None:
        """Give a session back; one whose call hit a transport error is discarded, not returned."""
        server = self._servers[runtime.id]
        if self._shares(server, self._key(server, identity), identity):
            self._unhold(server, identity)
        runtime.in_flight -= 1
        runtime.last_used = runtime.clock()
        lease.in_use -= 1
        lease.last_used = self.clock()
        if failed or lease.session.closed:
            self._evict(server, lease, "upstream_closed")
        if lease.retiring and lease.idle:  # evicted while in use, now or before: its last request ended
            server.retiring.discard(lease)
            self._close(lease)
        server.changed.set()

    # -- eviction -------------------------------------------------------------------------------

    def _evict(self, server: _Server, lease: Lease, reason: str) -> asyncio.Future[Any] | None:
        """Drop a session from the pool with its reason; close it now, or when its last request ends."""
        leases = server.leases.get(lease.identity)
        if leases is None or lease not in leases:
            return None
        leases.remove(lease)
        if not leases:
            del server.leases[lease.identity]
        lease.reason = reason
        self.observer.pool_event(server.runtime.id, PoolEvent.EVICTED, reason)
        server.changed.set()
        if lease.idle:
            return self._close(lease)
        lease.retiring = True  # requests in flight finish first
        server.retiring.add(lease)
        return None

    def _close(self, lease: Lease) -> asyncio.Future[Any] | None:
        """Close an evicted session: DELETE for HTTP; a stdio process is stopped by its runtime."""
        server = self._servers[lease.server_id]
        if lease.session.closed:
            return None
        if server.stdio:
            if any(other.session is lease.session for other in self.leases(lease.server_id)):
                return None  # the process was pooled again while this lease retired: it serves others now
            reason = _EVICTION_STOPS.get(lease.reason, StopReason.MANUAL)
            closing = asyncio.ensure_future(server.runtime.stop(reason))
        else:
            closing = asyncio.ensure_future(lease.session.close(lease.reason))
        closing.add_done_callback(_log_failure)
        return closing

    def _open_breaker(self, server: _Server) -> None:
        log.error("server %s: circuit breaker open for %gs", server.runtime.id, server.config.cooldown)
        for lease in [lease for leases in server.leases.values() for lease in leases if lease.idle]:
            self._evict(server, lease, "circuit_breaker")

    def server_stopped(self, server_id: str, reason: StopReason) -> None:
        """The lifecycle stopped a server: its sessions are gone, with the stop's reason."""
        server = self._servers.get(server_id)
        if server is None:
            return
        for lease in [lease for leases in server.leases.values() for lease in leases]:
            self._evict(server, lease, _STOP_EVICTIONS.get(reason, "upstream_closed"))

    async def evict_server(self, server_id: str, reason: str) -> int:
        """Evict every session of one server (the admin endpoint, shutdown); returns how many."""
        server = self._servers[server_id]
        doomed = [lease for leases in server.leases.values() for lease in leases]
        closing = [future for lease in doomed if (future := self._evict(server, lease, reason)) is not None]
        await asyncio.gather(*closing, return_exceptions=True)
        return len(doomed)

    def sweep(self) -> None:
        """Evict sessions past their TTL or idle past `idle_ttl` (stdio idleness is the server's idle_timeout)."""
        now = self.clock()
        for server in self._servers.values():
            if server.stdio:
                continue  # a stdio session ends with its process; its runtime reports why
            for lease in [lease for leases in server.leases.values() for lease in leases]:
                if expired := self._expiry(server, lease, now):
                    self._evict(server, lease, expired)

    async def run_sweeper(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.sweep()

    async def close(self) -> None:
        for server_id in list(self._servers):
            await self.evict_server(server_id, "shutdown")

    # -- what operators and metrics read ------------------------------------------------------------

    def leases(self, server_id: str | None = None) -> list[Lease]:
        servers = [self._servers[server_id]] if server_id is not None else list(self._servers.values())
        return [lease for server in servers for leases in list(server.leases.values()) for lease in leases]

    def all_sessions(self) -> list[UpstreamSession]:
        """Every open session, retiring ones included: the drain deadline fails their requests too."""
        retiring = [lease for server in self._servers.values() for lease in server.retiring]
        return [lease.session for lease in self.leases() + retiring]

    def live_sessions(self, server_id: str, identity: str) -> list[UpstreamSession]:
        """Open sessions this caller may be using with one server (no hit or miss is counted).

        Retiring ones count: a request still running on one can be cancelled.
        """
        server = self._servers[server_id]
        key = self._key(server, identity)
        leases = [*server.leases.get(key, ()), *(lease for lease in server.retiring if lease.identity == key)]
        return [lease.session for lease in leases if not lease.session.closed]

    def occupancy(self) -> list[tuple[str, int, int, int]]:
        """(server id, sessions in use, sessions pooled, breaker state) for every server."""
        return [
            (
                server_id,
                sum(1 for lease in self.leases(server_id) if not lease.idle),
                server.size,
                int(server.breaker.state),
            )
            for server_id, server in list(self._servers.items())
        ]

    def describe(self, server_id: str) -> dict[str, Any]:
        server = self._servers[server_id]
        now = self.clock()
        breaker = server.breaker
        return {
            "breaker": {"state": breaker.state.name.lower(), "consecutive_failures": breaker.failures},
            "size": server.size,
            "sessions": [
                {
                    "identity": lease.identity or "*",
                    "state": "retiring" if lease.retiring else ("in_use" if lease.in_use else "idle"),
                    "in_use": lease.in_use,
                    "age_seconds": round(now - lease.created, 3),
                    "idle_seconds": round(now - lease.last_used, 3) if lease.idle else 0.0,
                    "protocol_version": lease.session.protocol_version,
                }
                for lease in [*self.leases(server_id), *server.retiring]
            ],
        }


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing an evicted session failed: %s", task.exception())
