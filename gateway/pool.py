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
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.breaker import Breaker
from gateway.config import PoolConfig, fair_share
from gateway.errors import CircuitOpen, GatewayError, IdentityShare, PoolExhausted
from gateway.events import EvictionReason, Observer, PoolEvent, StopReason, eviction_for_stop
from gateway.modern import health_check
from gateway.runtime import ServerRuntime
from gateway.upstream.base import UpstreamSession

log = logging.getLogger(__name__)

Clock = Callable[[], float]
SHARED = ""  # the identity of a session every caller may use


@dataclass(eq=False)
class PooledSession:
    """One pooled session and its bookkeeping; what `acquire` hands out and `release` takes back."""

    session: UpstreamSession
    server_id: str
    identity: str
    created: float
    last_used: float
    in_use: int = 0
    retiring: bool = False  # evicted while in use: closed when its last request ends
    reason: EvictionReason | None = None  # why it was evicted, once it was

    @property
    def idle(self) -> bool:
        return self.in_use == 0


@dataclass
class _PooledServer:
    runtime: ServerRuntime
    config: PoolConfig
    breaker: Breaker
    identities: int  # callers that can tell themselves apart: they share the shared sessions' slots
    by_key: dict[str, list[PooledSession]] = field(default_factory=dict)
    retiring: set[PooledSession] = field(default_factory=set)  # evicted, their last requests still running
    pending: dict[str, asyncio.Future[PooledSession]] = field(default_factory=dict)
    creating: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    held: Counter[str] = field(default_factory=Counter)  # requests in flight per caller, on shared sessions

    @property
    def size(self) -> int:
        return sum(len(keyed) for keyed in self.by_key.values()) + self.creating

    @property
    def per_key(self) -> int:
        """Sessions one key may have: a server with a single session (a stdio process) has one."""
        return 1 if self.runtime.single_session else self.config.max_sessions_per_key

    @functools.cached_property
    def slots(self) -> int:
        """Concurrent requests the server's shared sessions carry, all callers together."""
        return self.per_key * self.config.max_requests_per_session

    @functools.cached_property
    def share(self) -> int:
        """Concurrent requests one caller may have on them."""
        return self.config.max_requests_per_identity or fair_share(self.slots, self.identities)


class SessionPool:
    def __init__(self, observer: Observer, clock: Clock = time.monotonic, identities: int = 1) -> None:
        self.observer = observer
        self.clock = clock
        self.identities = identities  # callers that can tell themselves apart: their default share
        self._servers: dict[str, _PooledServer] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def add(self, runtime: ServerRuntime) -> None:
        config = runtime.config.pool
        breaker = Breaker(config.failure_threshold, config.cooldown)
        self._servers[runtime.id] = _PooledServer(runtime, config, breaker, self.identities)
        runtime.stop_listeners.append(self.server_stopped)

    def _key(self, server: _PooledServer, identity: str) -> str:
        return SHARED if server.config.share_sessions or server.runtime.single_session else identity

    # -- acquire and release --------------------------------------------------------------------

    async def acquire(self, runtime: ServerRuntime, identity: str) -> PooledSession:
        """A session for this caller; pair every acquire with `release` (the same identity)."""
        started = self.clock()
        server = self._servers[runtime.id]
        try:
            pooled = await self._acquire(server, identity)
        finally:
            self.observer.pool_acquired(runtime.id, self.clock() - started)
        pooled.in_use += 1
        runtime.request_started()
        return pooled

    async def _acquire(self, server: _PooledServer, identity: str) -> PooledSession:
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
                    pooled = await self._take(server, key)
                except BaseException:
                    self._unhold(server, identity if shared else None)
                    raise
                if pooled is not None:
                    return pooled
                self._unhold(server, identity if shared else None)
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise self._exhausted(server, identity, over_share)
            server.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.changed.wait(), remaining)

    async def _take(self, server: _PooledServer, key: str) -> PooledSession | None:
        """A session of the key now: a live one (hit), a new one (miss), or None when none can be had."""
        config = server.config
        while True:
            pooled = self._pick(server, key)
            if pooled is not None:
                if pooled.idle and self._check_due(server, pooled) and not await self._healthy(server, pooled):
                    continue
                self.observer.pool_event(server.runtime.id, PoolEvent.HIT)
                return pooled
            pending = server.pending.get(key)
            if pending is not None and not pending.done():  # a done one would be awaited without yielding
                # Someone is creating this key's session: share it rather than open a second one.
                await asyncio.shield(pending)
                continue
            may_add = len(server.by_key.get(key, ())) < server.per_key
            fits = server.size < config.max_sessions
            victim = None if fits or not may_add else self._least_recently_used(server)
            if not may_add or not (fits or victim is not None):
                return None
            self._admit(server)  # before anything is evicted for it: an open breaker fails fast
            if victim is not None:
                self._evict(server, victim, EvictionReason.CAPACITY)
            creation = asyncio.ensure_future(self._create(server, key))
            server.pending[key] = creation
            try:
                pooled = await asyncio.shield(creation)
            finally:
                if server.pending.get(key) is creation:
                    del server.pending[key]
            self.observer.pool_event(server.runtime.id, PoolEvent.MISS)
            return pooled

    @staticmethod
    def _shares(server: _PooledServer, key: str, identity: str) -> bool:
        """Whether this caller's requests count against its share: on a shared session that has one."""
        return key == SHARED and identity != SHARED and server.share < server.slots

    @staticmethod
    def _unhold(server: _PooledServer, identity: str | None) -> None:
        if identity is not None:
            server.held[identity] -= 1
            if server.held[identity] <= 0:
                del server.held[identity]

    def _exhausted(self, server: _PooledServer, identity: str, over_share: bool) -> PoolExhausted:
        config, server_id = server.config, server.runtime.id
        if over_share:
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

    def _pick(self, server: _PooledServer, key: str) -> PooledSession | None:
        """The least loaded usable session of the key; expired and dead ones are evicted on sight."""
        best: PooledSession | None = None
        now = self.clock()
        for pooled in list(server.by_key.get(key, ())):
            if expired := self._expiry(server, pooled, now):
                self._evict(server, pooled, expired)
            elif pooled.in_use < server.config.max_requests_per_session and (
                best is None or pooled.in_use < best.in_use
            ):
                best = pooled
        return best

    def _expiry(self, server: _PooledServer, pooled: PooledSession, now: float) -> EvictionReason | None:
        """Why a pooled session must go now, if it must: dead, past its TTL, or idle past `idle_ttl`.

        A stdio session's age and idleness are its server's business (`idle_timeout`), not the pool's.
        """
        if pooled.session.closed:
            return EvictionReason.UPSTREAM_CLOSED
        if server.runtime.single_session:
            return None
        ttl, idle_ttl = server.config.ttl, server.config.idle_ttl
        if ttl and now - pooled.created > ttl:
            return EvictionReason.TTL_EXPIRED
        if idle_ttl and pooled.idle and now - pooled.last_used > idle_ttl:
            return EvictionReason.IDLE
        return None

    def _check_due(self, server: _PooledServer, pooled: PooledSession) -> bool:
        interval = server.config.health_check_interval
        return bool(interval) and self.clock() - pooled.last_used > interval

    async def _healthy(self, server: _PooledServer, pooled: PooledSession) -> bool:
        """Ping a session that sat idle; a failure evicts it and counts against the breaker."""
        pooled.in_use += 1  # nobody else takes it while it is being checked
        try:
            session = pooled.session
            check, headers = health_check(session.modern)
            response = await session.request(check, timeout=server.config.health_check_timeout, headers=headers)
            ok = "result" in response
        except GatewayError:
            ok = False
        finally:
            pooled.in_use -= 1
        if ok:
            pooled.last_used = self.clock()
            return True
        log.warning("server %s: a pooled session failed its health check", server.runtime.id)
        self.observer.pool_event(server.runtime.id, PoolEvent.HEALTH_CHECK_FAILED)
        self._evict(server, pooled, EvictionReason.HEALTH_CHECK)
        if server.breaker.failed(self.clock()):
            self._open_breaker(server)
        return False

    @staticmethod
    def _least_recently_used(server: _PooledServer) -> PooledSession | None:
        """The idle session to evict when the server is at `max_sessions` and a new one is needed."""
        idle = [pooled for keyed in server.by_key.values() for pooled in keyed if pooled.idle]
        return min(idle, key=lambda pooled: pooled.last_used) if idle else None

    def _admit(self, server: _PooledServer) -> None:
        """May a session be created now? In half-open state this one creation is the probe."""
        if not server.breaker.admit(self.clock()):
            raise CircuitOpen(
                f"server {server.runtime.id!r} is failing: its circuit breaker is open for "
                f"{server.config.cooldown:g}s after {server.breaker.failures} failures",
                data={"server": server.runtime.id, "reason": "circuit_open"},
            )

    async def _create(self, server: _PooledServer, key: str) -> PooledSession:
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
        existing = next((pooled for pooled in server.by_key.get(key, ()) if pooled.session is session), None)
        if existing is not None:  # a stdio server's one process, already pooled
            return existing
        pooled = PooledSession(session, runtime.id, key, now, now)
        server.by_key.setdefault(key, []).append(pooled)
        return pooled

    def release(self, runtime: ServerRuntime, pooled: PooledSession, *, identity: str, failed: bool = False) -> None:
        """Give a session back; one whose call hit a transport error is discarded, not returned."""
        server = self._servers[runtime.id]
        if self._shares(server, self._key(server, identity), identity):
            self._unhold(server, identity)
        runtime.request_ended()
        pooled.in_use -= 1
        pooled.last_used = self.clock()
        if failed or pooled.session.closed:
            self._evict(server, pooled, EvictionReason.UPSTREAM_CLOSED)
        if pooled.retiring and pooled.idle:  # evicted while in use, now or before: its last request ended
            server.retiring.discard(pooled)
            self._close(pooled)
        server.changed.set()

    # -- eviction -------------------------------------------------------------------------------

    def _evict(
        self, server: _PooledServer, pooled: PooledSession, reason: EvictionReason
    ) -> asyncio.Future[Any] | None:
        """Drop a session from the pool with its reason; close it now, or when its last request ends."""
        keyed = server.by_key.get(pooled.identity)
        if keyed is None or pooled not in keyed:
            return None
        keyed.remove(pooled)
        if not keyed:
            del server.by_key[pooled.identity]
        pooled.reason = reason
        self.observer.pool_event(server.runtime.id, PoolEvent.EVICTED, reason)
        server.changed.set()
        if pooled.idle:
            return self._close(pooled)
        pooled.retiring = True  # requests in flight finish first
        server.retiring.add(pooled)
        return None

    def _close(self, pooled: PooledSession) -> asyncio.Future[Any] | None:
        """Close an evicted session, as its runtime closes one (DELETE; or a stdio server's stop)."""
        server = self._servers[pooled.server_id]
        if pooled.session.closed:
            return None
        if any(other.session is pooled.session for other in self.pooled_sessions(pooled.server_id)):
            return None  # the one session was pooled again while this entry retired: it serves others now
        reason = pooled.reason or EvictionReason.MANUAL
        closing = asyncio.ensure_future(server.runtime.close_session(pooled.session, reason))
        closing.add_done_callback(_log_failure)
        return closing

    def _open_breaker(self, server: _PooledServer) -> None:
        log.error("server %s: circuit breaker open for %gs", server.runtime.id, server.config.cooldown)
        for pooled in [pooled for keyed in server.by_key.values() for pooled in keyed if pooled.idle]:
            self._evict(server, pooled, EvictionReason.CIRCUIT_BREAKER)

    def server_stopped(self, server_id: str, reason: StopReason) -> None:
        """The lifecycle stopped a server: its sessions are gone, with the stop's reason."""
        server = self._servers.get(server_id)
        if server is None:
            return
        for pooled in [pooled for keyed in server.by_key.values() for pooled in keyed]:
            self._evict(server, pooled, eviction_for_stop(reason))

    async def evict_server(self, server_id: str, reason: EvictionReason) -> int:
        """Evict every session of one server (the admin endpoint, shutdown); returns how many."""
        server = self._servers[server_id]
        doomed = [pooled for keyed in server.by_key.values() for pooled in keyed]
        closing = [future for pooled in doomed if (future := self._evict(server, pooled, reason)) is not None]
        await asyncio.gather(*closing, return_exceptions=True)
        return len(doomed)

    def sweep(self) -> None:
        """Evict sessions past their TTL or idle past `idle_ttl` (stdio idleness is the server's idle_timeout)."""
        now = self.clock()
        for server in self._servers.values():
            if server.runtime.single_session:
                continue  # a single session ends with its server (a process); its runtime reports why
            for pooled in [pooled for keyed in server.by_key.values() for pooled in keyed]:
                if expired := self._expiry(server, pooled, now):
                    self._evict(server, pooled, expired)

    async def run_sweeper(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.sweep()

    async def close(self) -> None:
        for server_id in list(self._servers):
            await self.evict_server(server_id, EvictionReason.SHUTDOWN)

    # -- what operators and metrics read ------------------------------------------------------------

    def pooled_sessions(self, server_id: str | None = None) -> list[PooledSession]:
        servers = [self._servers[server_id]] if server_id is not None else list(self._servers.values())
        return [pooled for server in servers for keyed in list(server.by_key.values()) for pooled in keyed]

    def all_sessions(self) -> list[UpstreamSession]:
        """Every open session, retiring ones included: the drain deadline fails their requests too."""
        retiring = [pooled for server in self._servers.values() for pooled in server.retiring]
        return [pooled.session for pooled in self.pooled_sessions() + retiring]

    def live_sessions(self, server_id: str, identity: str) -> list[UpstreamSession]:
        """Open sessions this caller may be using with one server (no hit or miss is counted).

        Retiring ones count: a request still running on one can be cancelled.
        """
        server = self._servers[server_id]
        key = self._key(server, identity)
        keyed = [*server.by_key.get(key, ()), *(pooled for pooled in server.retiring if pooled.identity == key)]
        return [pooled.session for pooled in keyed if not pooled.session.closed]

    def occupancy(self) -> list[tuple[str, int, int, int]]:
        """(server id, sessions in use, sessions pooled, breaker state) for every server."""
        return [
            (
                server_id,
                sum(1 for pooled in self.pooled_sessions(server_id) if not pooled.idle),
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
                    "identity": pooled.identity or "*",
                    "state": "retiring" if pooled.retiring else ("in_use" if pooled.in_use else "idle"),
                    "in_use": pooled.in_use,
                    "age_seconds": round(now - pooled.created, 3),
                    "idle_seconds": round(now - pooled.last_used, 3) if pooled.idle else 0.0,
                    "protocol_version": pooled.session.protocol_version,
                }
                for pooled in [*self.pooled_sessions(server_id), *server.retiring]
            ],
        }


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing an evicted session failed: %s", task.exception())
