"""The session pool driven directly, in scripted sequences whose counters are asserted exactly.

Each test builds a `SessionPool` over real upstreams (the SDK's streamable-HTTP server, or the
misbehaving stdio server) with a clock the test moves by hand, so TTLs, idle times, health-check
intervals and breaker cooldowns pass in an instant; one test lets real time pass for a TTL. A
recording observer counts what the pool reports; the upstream itself shows whether an evicted HTTP
session was really ended (it answers 404 to the session id once the gateway's DELETE arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from gateway.config import StdioServer, parse_config
from gateway.errors import CircuitOpen, ErrorType, PoolExhausted, UpstreamClosed, UpstreamUnavailable
from gateway.events import EvictionReason
from gateway.pool import PooledSession, SessionPool
from gateway.runtime import ServerRuntime, build_runtime
from gateway.upstream.http import HttpSession
from tests.pool.support import FakeClock, RecordingObserver
from tests.support.processes import FAST_RESTART, Upstream, free_port, misbehaving_server, start_http_upstream
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


@dataclass
class Harness:
    """One pool over one server, with the clock and the observer the test reads."""

    pool: SessionPool
    runtime: ServerRuntime
    observer: RecordingObserver
    clock: Callable[[], float]

    @property
    def server_id(self) -> str:
        return self.runtime.id

    callers: dict[int, list[str]] = field(default_factory=dict)  # who holds each pooled, by id(pooled)

    async def acquire(self, identity: str) -> PooledSession:
        pooled = await self.pool.acquire(self.runtime, identity)
        self.callers.setdefault(id(pooled), []).append(identity)
        return pooled

    def release(self, pooled: PooledSession, failed: bool = False) -> None:
        identity = self.callers[id(pooled)].pop()
        self.pool.release(self.runtime, pooled, identity=identity, failed=failed)

    async def touch(self, identity: str) -> PooledSession:
        """Acquire and release at once: one request's worth of use."""
        pooled = await self.acquire(identity)
        self.release(pooled)
        return pooled

    def describe(self) -> dict[str, Any]:
        return self.pool.describe(self.server_id)

    def counts(self) -> tuple[int, int]:
        return self.observer.hits, self.observer.misses


@contextlib.asynccontextmanager
async def harness(server: dict[str, Any], clock: Callable[[], float] | None = None) -> AsyncIterator[Harness]:
    """A pool with one server `srv` built from config, as the gateway builds it; closed afterwards."""
    config = parse_config({"servers": {"srv": server}}).servers["srv"]
    observer = RecordingObserver()
    clock = clock or FakeClock()
    runtime = build_runtime("srv", config, observer, lambda *_: None, clock)
    pool = SessionPool(observer, clock=clock)
    pool.add(runtime)
    try:
        yield Harness(pool, runtime, observer, clock)
    finally:
        await pool.close()
        await runtime.close()


def http(upstream: Upstream | str, **pool: Any) -> dict[str, Any]:
    url = upstream if isinstance(upstream, str) else upstream.url
    # 2025 sessions: what these tests pool (a 2026 upstream has no session to pool, see docs/session-pool.md)
    return {"url": url, "protocol": "2025", "start_timeout": 10, "pool": {"health_check_interval": 0, **pool}}


def stdio(**pool: Any) -> dict[str, Any]:
    return misbehaving_server(restart=FAST_RESTART, pool={"health_check_interval": 0, **pool})


async def call(pooled: PooledSession, method: str, params: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": "t", "method": method}
    if params is not None:
        message["params"] = params
    response = await pooled.session.request(message, timeout=timeout)
    assert "result" in response, response
    return response["result"]


async def whoami(pooled: PooledSession) -> dict[str, Any]:
    """The upstream's view of the caller: its MCP session id and how often that session called."""
    result = await call(pooled, "tools/call", {"name": "whoami", "arguments": {}})
    return dict(result.get("structuredContent") or json.loads(result["content"][0]["text"]))


def http_session(pooled: PooledSession) -> HttpSession:
    assert isinstance(pooled.session, HttpSession)
    return pooled.session


async def upstream_forgot(upstream: Upstream, pooled: PooledSession) -> bool:
    """Has the upstream ended this session (the gateway's DELETE arrived)? It then answers 404."""
    session = http_session(pooled)
    assert session.session_id
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Mcp-Session-Id": session.session_id,
        "MCP-Protocol-Version": session.protocol_version,
    }
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(upstream.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers)
    assert response.status_code in (200, 404), response.text
    return response.status_code == 404


async def assert_ended(upstream: Upstream, *keyed: PooledSession) -> None:
    """Every one of these evicted sessions is closed by the gateway, and its upstream saw the DELETE."""
    for pooled in keyed:
        await eventually(functools.partial(_closed, pooled), what="the evicted session to close")
        assert await upstream_forgot(upstream, pooled), "the upstream never saw the DELETE"


async def exhaust(harness: Harness, identity: str) -> PoolExhausted:
    """Acquire where nothing is free; the fake clock runs on while the pool waits, until it gives up."""
    clock = harness.clock
    assert isinstance(clock, FakeClock)
    waiter = asyncio.ensure_future(harness.acquire(identity))

    def gave_up() -> bool:
        clock.advance(0.05)  # each poll moves time on; the pool rechecks its deadline when its wait ends
        return waiter.done()

    await eventually(gave_up, what="the acquire to time out")
    error = waiter.exception()
    assert isinstance(error, PoolExhausted), error
    assert error.error_type is ErrorType.POOL_EXHAUSTED
    assert error.data == {"server": harness.server_id, "reason": "pool_exhausted"}
    return error


def _closed(pooled: PooledSession) -> bool:
    return pooled.session.closed


def process_gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


# -- hits, misses and keys ---------------------------------------------------------------------------


async def test_first_use_misses_then_the_session_is_reused(http_upstream: Upstream) -> None:
    clock = FakeClock()
    async with harness(http(http_upstream), clock) as h:
        first = await h.acquire("alice")
        assert h.counts() == (0, 1)
        assert h.pool.occupancy() == [("srv", 1, 1, 0)]
        h.release(first)
        clock.advance(2.5)
        assert h.describe() == {
            "breaker": {"state": "closed", "consecutive_failures": 0},
            "size": 1,
            "sessions": [
                {
                    "identity": "alice",
                    "state": "idle",
                    "in_use": 0,
                    "age_seconds": 2.5,
                    "idle_seconds": 2.5,
                    "protocol_version": first.session.protocol_version,
                }
            ],
        }
        second = await h.acquire("alice")
        assert second is first and second.in_use == 1
        assert h.counts() == (1, 1) and h.observer.acquires == 2
        assert (await whoami(second))["session_id"] == http_session(first).session_id
        h.release(second)
        assert h.pool.occupancy() == [("srv", 0, 1, 0)]
        assert h.runtime.in_flight == 0
        assert not h.observer.evictions


async def test_each_identity_gets_a_session_of_its_own(http_upstream: Upstream) -> None:
    async with harness(http(http_upstream)) as h:
        alice = await h.acquire("alice")
        bob = await h.acquire("bob")
        assert alice is not bob and alice.session is not bob.session
        assert (alice.identity, bob.identity) == ("alice", "bob")
        seen = [await whoami(alice), await whoami(bob), await whoami(alice)]
        assert seen[0]["session_id"] == seen[2]["session_id"] != seen[1]["session_id"]
        assert [s["calls"] for s in seen] == [1, 1, 2]  # per-session state upstream does not leak
        assert h.counts() == (0, 2)
        h.release(alice)
        h.release(bob)
        assert h.counts() == (0, 2)
        assert sorted(s["identity"] for s in h.describe()["sessions"]) == ["alice", "bob"]


async def test_concurrent_requests_of_one_identity_share_one_session(http_upstream: Upstream) -> None:
    async with harness(http(http_upstream)) as h:
        keyed = await asyncio.gather(*(h.acquire("alice") for _ in range(3)))
        assert all(pooled is keyed[0] for pooled in keyed) and keyed[0].in_use == 3
        assert h.counts() == (2, 1)  # concurrent misses share one creation
        assert h.pool.occupancy() == [("srv", 1, 1, 0)]
        answers = await asyncio.gather(*(whoami(pooled) for pooled in keyed))  # multiplexed on one session
        assert {a["session_id"] for a in answers} == {http_session(keyed[0]).session_id}
        assert sorted(a["calls"] for a in answers) == [1, 2, 3]
        for pooled in keyed:
            h.release(pooled)
        assert keyed[0].in_use == 0 and h.runtime.in_flight == 0
        assert h.describe()["sessions"][0]["state"] == "idle"


async def test_share_sessions_gives_every_caller_one_session(http_upstream: Upstream) -> None:
    async with harness(http(http_upstream, share_sessions=True)) as h:
        alice = await h.acquire("alice")
        bob = await h.acquire("bob")
        assert alice is bob and alice.in_use == 2
        assert h.counts() == (1, 1)
        assert [s["identity"] for s in h.describe()["sessions"]] == ["*"]
        h.release(alice)
        h.release(bob)


async def test_a_stdio_server_is_one_session_for_every_caller() -> None:
    async with harness(stdio()) as h:
        alice = await h.acquire("alice")
        bob = await h.acquire("bob")
        assert alice is bob and alice.session.pid == h.runtime.pid is not None
        assert h.counts() == (1, 1)
        h.release(alice)
        h.release(bob)
        assert h.describe()["size"] == 1


async def test_a_busy_stdio_session_is_waited_for_not_oversubscribed() -> None:
    # Its process is the only session there can be: at max_requests_per_session, callers wait.
    async with harness(stdio(max_requests_per_session=1, acquire_timeout=0.05)) as h:
        held = await h.acquire("alice")
        await exhaust(h, "bob")
        assert held.in_use == 1 and h.counts() == (0, 1)
        waiter = asyncio.ensure_future(h.acquire("bob"))
        await asyncio.sleep(0)  # let it start waiting
        assert not waiter.done()
        h.release(held)
        assert await waiter is held
        assert h.counts() == (1, 1)
        h.release(held)


# -- expiry ------------------------------------------------------------------------------------------


async def test_sessions_past_their_ttl_are_evicted_by_the_sweep_and_on_acquire(http_upstream: Upstream) -> None:
    clock = FakeClock()
    async with harness(http(http_upstream, ttl=10, idle_ttl=0), clock) as h:
        alice, bob = await h.touch("alice"), await h.touch("bob")
        clock.advance(10)
        h.pool.sweep()  # exactly at the TTL: not yet past it
        assert h.describe()["size"] == 2
        clock.advance(1)
        h.pool.sweep()
        assert h.observer.evictions == {"ttl_expired": 2} and h.describe()["size"] == 0
        await assert_ended(http_upstream, alice, bob)

        busy = await h.acquire("alice")  # in use when it expires: closed when its request ends
        clock.advance(11)
        h.pool.sweep()
        assert h.observer.evictions == {"ttl_expired": 3} and h.describe()["size"] == 0
        assert await whoami(busy)  # still serves the request it carries
        assert not busy.session.closed
        h.release(busy)
        await assert_ended(http_upstream, busy)

        old = await h.touch("alice")
        clock.advance(11)
        fresh = await h.acquire("alice")  # no sweep: the acquire itself sees the expired session
        assert fresh is not old
        assert h.observer.evictions == {"ttl_expired": 4}
        await assert_ended(http_upstream, old)
        h.release(fresh)
        assert h.counts() == (0, 5)


async def test_sessions_idle_past_idle_ttl_are_evicted_by_the_sweep_and_on_acquire(http_upstream: Upstream) -> None:
    clock = FakeClock()
    async with harness(http(http_upstream, idle_ttl=5), clock) as h:
        alice = await h.touch("alice")
        clock.advance(3)
        bob = await h.touch("bob")
        clock.advance(3)
        h.pool.sweep()  # alice idle 6s, bob 3s
        assert h.observer.evictions == {"idle": 1}
        assert [s["identity"] for s in h.describe()["sessions"]] == ["bob"]
        await assert_ended(http_upstream, alice)

        carol = await h.acquire("carol")
        clock.advance(100)
        h.pool.sweep()  # a session in use is never idle, however long its request takes
        assert h.observer.evictions == {"idle": 2}
        assert [s["identity"] for s in h.describe()["sessions"]] == ["carol"]
        await assert_ended(http_upstream, bob)

        h.release(carol)
        clock.advance(5)
        assert await h.touch("carol") is carol  # idle exactly idle_ttl: still good
        clock.advance(5.5)
        again = await h.acquire("carol")  # no sweep: the acquire itself sees it idle too long
        assert again is not carol
        assert h.observer.evictions == {"idle": 3}
        await assert_ended(http_upstream, carol)
        h.release(again)
        assert h.counts() == (1, 4)


async def test_ttl_in_real_time(http_upstream: Upstream) -> None:
    async with harness(http(http_upstream, ttl=0.2, idle_ttl=0), clock=time.monotonic) as h:
        pooled = await h.touch("alice")

        def swept() -> bool:
            h.pool.sweep()
            return not h.pool.pooled_sessions("srv")

        await eventually(swept, what="the session to outlive its TTL")
        assert h.observer.evictions == {"ttl_expired": 1}
        await assert_ended(http_upstream, pooled)
        assert h.counts() == (0, 1)


# -- health checks -----------------------------------------------------------------------------------


async def test_a_stdio_server_that_stops_answering_ping_is_stopped_and_replaced() -> None:
    clock = FakeClock()
    async with harness(stdio(health_check_interval=5, health_check_timeout=1), clock) as h:
        first = await h.touch("alice")
        pid = first.session.pid
        assert pid is not None
        clock.advance(5.5)
        checked = await h.acquire("bob")  # idle past the interval: pinged, answers, reused
        assert checked is first and h.counts() == (1, 1)
        assert h.observer.health_check_failures == 0
        await call(checked, "tools/call", {"name": "deafen", "arguments": {}})
        h.release(checked)
        clock.advance(2)
        assert await h.touch("carol") is first  # not due for a check yet
        clock.advance(5.5)

        replaced = await h.acquire("alice")
        assert h.observer.health_check_failures == 1
        assert h.observer.evictions == {"health_check": 1}
        assert ("srv", "health_check") in h.observer.stops
        assert replaced is not first and first.session.closed
        assert replaced.session.pid not in (None, pid)
        await eventually(lambda: process_gone(pid), what="the deaf process to exit")
        assert (await call(replaced, "ping")) == {}
        assert h.counts() == (2, 2)
        assert h.describe()["breaker"] == {"state": "closed", "consecutive_failures": 0}
        h.release(replaced)


async def test_a_frozen_http_upstream_fails_its_health_check(http_upstream: Upstream) -> None:
    clock = FakeClock()
    pool = {"health_check_interval": 5, "health_check_timeout": 0.3}
    async with harness({**http(http_upstream, **pool), "start_timeout": 0.5}, clock) as h:
        frozen = await h.touch("alice")
        clock.advance(6)
        os.kill(http_upstream.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(UpstreamUnavailable):  # the check fails, then so does a new session
                await h.acquire("alice")
        finally:
            os.kill(http_upstream.proc.pid, signal.SIGCONT)
        assert h.observer.health_check_failures == 1
        assert h.observer.evictions == {"health_check": 1}
        assert h.describe() == {"breaker": {"state": "closed", "consecutive_failures": 2}, "size": 0, "sessions": []}
        assert frozen.session.closed
        await assert_ended(http_upstream, frozen)  # the DELETE sent while it was frozen arrives
        fresh = await h.acquire("alice")
        assert h.counts() == (0, 2)
        assert h.describe()["breaker"] == {"state": "closed", "consecutive_failures": 0}
        h.release(fresh)


# -- circuit breaker ---------------------------------------------------------------------------------


async def test_the_breaker_opens_fails_fast_and_lets_one_probe_through(tmp_path: Path) -> None:
    clock = FakeClock()
    starts = tmp_path / "starts"
    failing = {
        "command": sys.executable,
        "args": ["-c", "import sys; open(sys.argv[1], 'a').write('x'); sys.exit(1)", str(starts)],
        "restart": FAST_RESTART,
        "pool": {"failure_threshold": 3, "cooldown": 30},
    }

    def spawned() -> int:
        return len(starts.read_text()) if starts.exists() else 0

    async with harness(failing, clock) as h:
        for attempt in range(1, 4):
            with pytest.raises(UpstreamUnavailable) as failed:
                await h.acquire(f"caller-{attempt}")
            assert failed.value.error_type is ErrorType.UNAVAILABLE
            assert spawned() == attempt
        assert h.describe()["breaker"] == {"state": "open", "consecutive_failures": 3}
        assert h.pool.occupancy() == [("srv", 0, 0, 2)]

        clock.advance(29.9)
        with pytest.raises(CircuitOpen) as refused:
            await h.acquire("caller-4")
        assert refused.value.error_type is ErrorType.CIRCUIT_OPEN
        assert refused.value.data == {"server": "srv", "reason": "circuit_open"}
        assert spawned() == 3  # failing fast: nothing was started

        clock.advance(0.1)  # the cooldown is over: one probe, which fails, and the breaker opens again
        with pytest.raises(UpstreamUnavailable):
            await h.acquire("caller-5")
        assert spawned() == 4
        assert h.describe()["breaker"] == {"state": "open", "consecutive_failures": 4}
        with pytest.raises(CircuitOpen):
            await h.acquire("caller-6")

        # The server is fixed; after the next cooldown the probe succeeds and the breaker closes.
        working = StdioServer(**misbehaving_server(pool=failing["pool"]))
        h.runtime.config = working
        clock.advance(30)
        pooled = await h.acquire("caller-7")
        assert (await call(pooled, "ping")) == {}
        assert h.describe()["breaker"] == {"state": "closed", "consecutive_failures": 0}
        assert h.pool.occupancy() == [("srv", 1, 1, 0)]
        h.release(pooled)
        assert spawned() == 4
        assert h.counts() == (0, 1) and h.observer.acquires == 7
        assert not h.observer.evictions


async def test_an_http_breaker_evicts_idle_sessions_and_closes_on_a_successful_probe() -> None:
    clock = FakeClock()
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    upstream = start_http_upstream("--port", str(port))
    try:
        async with harness(http(url, failure_threshold=3, cooldown=30), clock) as h:
            idle = await h.touch("xavier")
            upstream.stop()
            for caller in ("yann", "zoe", "walt"):
                with pytest.raises(UpstreamUnavailable):
                    await h.acquire(caller)
            assert h.describe() == {"breaker": {"state": "open", "consecutive_failures": 3}, "size": 0, "sessions": []}
            assert h.observer.evictions == {"circuit_breaker": 1}
            await eventually(lambda: idle.session.closed, what="the idle session to close")
            with pytest.raises(CircuitOpen):
                await h.acquire("xavier")

            upstream = start_http_upstream("--port", str(port))
            clock.advance(30)
            os.kill(upstream.proc.pid, signal.SIGSTOP)  # holds the probe in flight
            try:
                probe = asyncio.ensure_future(h.acquire("yann"))
                await eventually(lambda: h.describe()["breaker"]["state"] == "half_open", what="the probe to start")
                with pytest.raises(CircuitOpen):  # exactly one probe at a time
                    await h.acquire("zoe")
            finally:
                os.kill(upstream.proc.pid, signal.SIGCONT)
            yann = await probe
            assert h.describe()["breaker"] == {"state": "closed", "consecutive_failures": 0}
            zoe = await h.acquire("zoe")
            assert (await whoami(yann))["session_id"] != (await whoami(zoe))["session_id"]
            h.release(yann)
            h.release(zoe)
            assert h.counts() == (0, 3)
            assert h.observer.evictions == {"circuit_breaker": 1}
    finally:
        upstream.stop()


async def test_a_caller_refused_by_the_breaker_evicts_no_one_for_room() -> None:
    """At max_sessions, a caller the breaker turns away must not first evict an idle session."""
    clock = FakeClock()
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    upstream = start_http_upstream("--port", str(port))
    try:
        async with harness(http(url, max_sessions=2, failure_threshold=1, cooldown=30), clock) as h:
            alice = await h.acquire("alice")  # busy while the breaker opens, so it stays pooled
            upstream.stop()
            with pytest.raises(UpstreamUnavailable):
                await h.acquire("bob")
            assert h.describe()["breaker"]["state"] == "open"
            upstream = start_http_upstream("--port", str(port))
            h.release(alice)  # idle now, and the only pooled session

            clock.advance(30)
            os.kill(upstream.proc.pid, signal.SIGSTOP)  # holds carol's probe in flight: the pool is full
            try:
                probe = asyncio.ensure_future(h.acquire("carol"))
                await eventually(lambda: h.describe()["breaker"]["state"] == "half_open", what="the probe to start")
                with pytest.raises(CircuitOpen):
                    await h.acquire("dave")
                assert not h.observer.evictions and not alice.session.closed
            finally:
                os.kill(upstream.proc.pid, signal.SIGCONT)
            h.release(await probe)
            assert await h.touch("alice") is alice
    finally:
        upstream.stop()


# -- capacity and waiting ----------------------------------------------------------------------------


async def test_at_max_sessions_the_least_recently_used_idle_session_makes_room(http_upstream: Upstream) -> None:
    clock = FakeClock()
    async with harness(http(http_upstream, max_sessions=2, acquire_timeout=0.05), clock) as h:
        alice = await h.touch("alice")
        clock.advance(1)
        bob = await h.touch("bob")
        clock.advance(1)
        assert await h.touch("alice") is alice  # alice used last: bob is the least recently used
        carol = await h.acquire("carol")
        assert h.observer.evictions == {"capacity": 1}
        assert sorted(s["identity"] for s in h.describe()["sessions"]) == ["alice", "carol"]
        await assert_ended(http_upstream, bob)

        busy = await h.acquire("alice")  # both sessions in use now: nothing can be evicted
        await exhaust(h, "dave")
        assert h.observer.evictions == {"capacity": 1}
        h.release(busy)
        dave = await h.acquire("dave")
        assert h.observer.evictions == {"capacity": 2}
        await assert_ended(http_upstream, alice)
        assert h.describe()["size"] == 2
        h.release(carol)
        h.release(dave)
        assert h.counts() == (2, 4)


async def test_acquire_waits_for_a_busy_session_then_gives_up(http_upstream: Upstream) -> None:
    one_at_a_time = {"max_sessions_per_key": 1, "max_requests_per_session": 1, "acquire_timeout": 0.05}
    async with harness(http(http_upstream, **one_at_a_time)) as h:
        held = await h.acquire("alice")
        error = await exhaust(h, "alice")
        assert "all busy" in error.message
        assert h.counts() == (0, 1) and held.in_use == 1
        waiter = asyncio.ensure_future(h.acquire("alice"))
        await asyncio.sleep(0)  # let it start waiting
        assert not waiter.done()
        h.release(held)
        assert await waiter is held  # the release hands the session to the waiter
        assert h.counts() == (1, 1) and h.observer.acquires == 3
        h.release(held)
        assert not h.observer.evictions


# -- eviction by an operator or by the upstream --------------------------------------------------------


async def test_manual_eviction_closes_idle_sessions_now_and_busy_ones_when_done(http_upstream: Upstream) -> None:
    async with harness(http(http_upstream)) as h:
        idle = await h.touch("alice")
        busy = await h.acquire("bob")
        assert await h.pool.evict_server("srv", EvictionReason.MANUAL) == 2
        assert h.observer.evictions == {"manual": 2}
        assert idle.session.closed and not busy.session.closed
        assert busy.retiring and h.describe()["size"] == 0
        # Out of the pool, still open and still reachable: listed, and a cancellation would find it.
        assert [(s["state"], s["in_use"]) for s in h.describe()["sessions"]] == [("retiring", 1)]
        assert h.pool.live_sessions("srv", "bob") == [busy.session]
        assert await whoami(busy)
        h.release(busy)
        assert h.describe()["sessions"] == [] and h.pool.live_sessions("srv", "bob") == []
        await assert_ended(http_upstream, idle, busy)
        fresh = await h.acquire("bob")
        assert fresh is not busy and h.counts() == (0, 3)
        h.release(fresh)
        assert h.observer.evictions == {"manual": 2}


async def test_a_retiring_session_whose_last_request_failed_is_still_closed(http_upstream: Upstream) -> None:
    async with harness(http(http_upstream)) as h:
        busy = await h.acquire("alice")
        await h.pool.evict_server("srv", EvictionReason.MANUAL)
        h.release(busy, failed=True)
        await assert_ended(http_upstream, busy)
        assert h.observer.evictions == {"manual": 1}


async def test_a_busy_stdio_server_evicted_by_hand_is_not_stopped_under_its_next_caller() -> None:
    async with harness(stdio()) as h:
        busy = await h.acquire("alice")
        await h.pool.evict_server("srv", EvictionReason.MANUAL)
        assert busy.retiring and not busy.session.closed
        again = await h.acquire("bob")  # the process is still running: pooled again
        h.release(busy)
        assert (await call(again, "ping")) == {}
        assert not again.session.closed and again in h.pool.pooled_sessions("srv")
        assert h.observer.evictions == {"manual": 1} and not h.observer.stops
        h.release(again)


async def test_a_killed_stdio_server_is_evicted_as_upstream_closed() -> None:
    async with harness(stdio()) as h:
        pooled = await h.touch("alice")
        pid = pooled.session.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: not h.pool.pooled_sessions("srv"), what="the dead process to leave the pool")
        assert h.observer.evictions == {"upstream_closed": 1}
        assert ("srv", "crash") in h.observer.stops
        assert pooled.session.closed
        fresh = await h.acquire("alice")
        assert fresh.session.pid not in (None, pid)
        assert (await call(fresh, "ping")) == {}
        h.release(fresh)
        assert h.counts() == (0, 2)


async def test_a_dead_http_upstream_is_evicted_when_a_call_on_it_fails() -> None:
    upstream = start_http_upstream()
    try:
        async with harness(http(upstream)) as h:
            pooled = await h.touch("alice")
            upstream.stop()
            again = await h.acquire("alice")  # the pool cannot know yet
            assert again is pooled
            with pytest.raises(UpstreamClosed):
                await call(again, "ping")
            h.release(again, failed=True)
            assert h.observer.evictions == {"upstream_closed": 1}
            await eventually(lambda: pooled.session.closed, what="the broken session to close")
            assert h.describe()["size"] == 0 and h.counts() == (1, 1)
    finally:
        upstream.stop()


async def test_a_session_the_upstream_forgot_is_evicted_as_upstream_closed(http_upstream: Upstream) -> None:
    async with harness(http(http_upstream)) as h:
        pooled = await h.touch("alice")
        session = http_session(pooled)
        headers = {
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": str(session.session_id),
            "MCP-Protocol-Version": session.protocol_version,
        }
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.delete(http_upstream.url, headers=headers)).status_code == 200
        again = await h.acquire("alice")
        with pytest.raises(UpstreamClosed):  # HTTP 404: the session is over
            await again.session.notify({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
        assert again.session.closed
        h.release(again)  # a release that reports no failure still discards a closed session
        assert h.observer.evictions == {"upstream_closed": 1}
        fresh = await h.acquire("alice")
        assert fresh is not pooled and (await whoami(fresh))["calls"] == 1
        h.release(fresh)
        assert h.counts() == (1, 2)
