"""The session pool under random sequences of use, checked against its invariants after every step.

A hypothesis state machine acquires and releases sessions for a few identities, finishes requests
that may fail, lets time pass and sweeps, evicts everything by hand, breaks sessions, makes the
upstream forget sessions or refuse new ones, all under a pool configuration it draws. The upstream
is an in-process fake (every request answered at once) so that thousands of steps take seconds;
the pool, its clock aside, is the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.config import HttpServer, PoolConfig
from gateway.errors import CircuitOpen, PoolExhausted, UpstreamClosed, UpstreamUnavailable
from gateway.events import EvictionReason
from gateway.pool import PooledSession, SessionPool
from gateway.protocol import Message
from gateway.runtime import HttpRuntime
from gateway.upstream.base import Pending, UpstreamSession
from tests.pool.support import FakeClock, RecordingObserver

pytestmark = pytest.mark.fast

T = TypeVar("T")
IDENTITIES = ("alice", "bob", "carol")
REASONS = {"ttl_expired", "idle", "health_check", "circuit_breaker", "capacity", "upstream_closed", "manual"}


class FakeSession(UpstreamSession):
    """An upstream session that answers every request at once, until it is broken."""

    transport = "streamable-http"

    def __init__(self, server_id: str) -> None:
        super().__init__(server_id)
        self.broken = False  # requests fail as on a broken connection; the session does not know it is dead
        self.closes = 0  # how often the gateway ended it (a DELETE, for HTTP)

    async def _send(self, message: Message, pending: Pending | None) -> None:
        if self.broken:
            raise UpstreamClosed("broken", data={"server": self.server_id, "reason": "transport"})
        if pending is not None:
            self._dispatch({"jsonrpc": "2.0", "id": message["id"], "result": {}})

    async def _close_transport(self) -> None:
        self.closes += 1


class FakeRuntime(HttpRuntime):
    """A streamable-HTTP server whose sessions are `FakeSession`s, or that refuses new ones."""

    def __init__(self, pool: PoolConfig, observer: RecordingObserver, clock: FakeClock) -> None:
        config = HttpServer(url="http://127.0.0.1:9/mcp", pool=pool)
        super().__init__("fake", config, observer, lambda *_: None, clock)
        self.opened: list[FakeSession] = []
        self.refuse = False

    async def open_session(self) -> UpstreamSession:
        if self.refuse:
            raise UpstreamUnavailable("refused", data={"server": self.id, "reason": "connect"})
        session = FakeSession(self.id)
        self.opened.append(session)
        return session


pool_configs = st.builds(
    PoolConfig,
    share_sessions=st.booleans(),
    max_sessions=st.integers(1, 4),
    max_sessions_per_key=st.integers(1, 2),
    max_requests_per_session=st.integers(1, 3),
    acquire_timeout=st.just(0.001),
    ttl=st.sampled_from([0.0, 5.0]),
    idle_ttl=st.sampled_from([0.0, 3.0]),
    health_check_interval=st.sampled_from([0.0, 2.0]),
    failure_threshold=st.integers(1, 3),
    cooldown=st.just(4.0),
)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.observer = RecordingObserver()
        self.config = PoolConfig()
        self.runtime = FakeRuntime(self.config, self.observer, self.clock)
        self.pool = SessionPool(self.observer, clock=self.clock)
        self.held: list[tuple[str, PooledSession]] = []  # (identity, pooled) of every acquire not yet released
        self.attempts = 0
        self.acquired = 0

    # -- driving the pool ------------------------------------------------------------------------

    def run(self, work: Callable[[], T]) -> T:
        """Call into the pool from inside the loop, then let what it scheduled (closes) finish."""

        async def inside() -> T:
            result = work()
            await self._settle()
            return result

        return self.loop.run_until_complete(inside())

    async def _settle(self) -> None:
        while tasks := [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _acquire(self, identity: str) -> PooledSession:
        """One acquire; when it has to wait, time passes until it is served or gives up."""
        self.attempts += 1
        task = asyncio.ensure_future(self.pool.acquire(self.runtime, identity))
        for _ in range(20):
            if task.done():
                break
            await asyncio.sleep(0)
        while not task.done():
            self.clock.advance(0.01)
            await asyncio.sleep(0.002)
        await self._settle()
        return task.result()

    def key(self, identity: str) -> str:
        return "" if self.config.share_sessions else identity

    def pooled(self) -> list[PooledSession]:
        return self.pool.pooled_sessions(self.runtime.id)

    def breaker(self) -> dict[str, Any]:
        return dict(self.pool.describe(self.runtime.id)["breaker"])

    def holders(self, pooled: PooledSession) -> list[str]:
        return [identity for identity, held in self.held if held is pooled]

    def acquire(self, identity: str) -> PooledSession | None:
        """Acquire as the gateway does; check why it failed if it did. None when it failed."""
        failures, checks_failed = self.breaker()["consecutive_failures"], self.observer.health_check_failures
        misses = self.observer.misses
        try:
            pooled = self.loop.run_until_complete(self._acquire(identity))
        except PoolExhausted:
            # Nothing of the key had room, and no session could be added for it.
            mine = [pooled for pooled in self.pooled() if pooled.identity == self.key(identity)]
            assert all(pooled.in_use >= self.config.max_requests_per_session for pooled in mine)
            full = len(self.pooled()) >= self.config.max_sessions and all(not pooled.idle for pooled in self.pooled())
            assert len(mine) >= self.config.max_sessions_per_key or full
            return None
        except CircuitOpen:
            assert self.breaker()["state"] == "open"
            return None
        except UpstreamUnavailable:
            assert self.runtime.refuse
            failed = 1 + self.observer.health_check_failures - checks_failed  # this creation, and any checks
            assert self.breaker()["consecutive_failures"] == failures + failed
            return None
        self.acquired += 1
        if self.observer.misses > misses:
            assert self.breaker() == {"state": "closed", "consecutive_failures": 0}  # a new session closes it
        assert pooled.identity == self.key(identity) and pooled in self.pooled() and not pooled.retiring
        self.held.append((identity, pooled))
        return pooled

    # -- rules -----------------------------------------------------------------------------------

    @initialize(config=pool_configs)
    def configure(self, config: PoolConfig) -> None:
        self.config = config
        self.runtime = FakeRuntime(config, self.observer, self.clock)
        self.pool.add(self.runtime)

    @rule(identity=st.sampled_from(IDENTITIES))
    def take(self, identity: str) -> None:
        self.acquire(identity)

    def unserved(self) -> list[str]:
        """Callers that could have two first requests at once served by one new session, without waiting."""
        config, pooled = self.config, self.pooled()
        if config.max_requests_per_session < 2 or self.runtime.refuse:
            return []
        if self.breaker()["state"] != "closed":
            return []
        if len(pooled) >= config.max_sessions and not any(pooled.idle for pooled in pooled):
            return []
        keys = {pooled.identity for pooled in pooled}
        return [identity for identity in IDENTITIES if self.key(identity) not in keys]

    @precondition(lambda self: self.unserved())
    @rule(which=st.integers(0, 20))
    def take_two_at_once(self, which: int) -> None:
        """Two concurrent first requests of one caller: one creation, shared."""
        candidates = self.unserved()
        identity = candidates[which % len(candidates)]
        hits, misses, opened = self.observer.hits, self.observer.misses, len(self.runtime.opened)

        async def both() -> list[PooledSession]:
            self.attempts += 2
            keyed = await asyncio.gather(*(self.pool.acquire(self.runtime, identity) for _ in range(2)))
            await self._settle()
            return list(keyed)

        first, second = self.loop.run_until_complete(both())
        self.acquired += 2
        assert first is second and first.in_use == 2
        assert (self.observer.hits, self.observer.misses) == (hits + 1, misses + 1)
        assert len(self.runtime.opened) == opened + 1
        self.held += [(identity, first), (identity, second)]

    @precondition(lambda self: self.held)
    @rule(which=st.integers(0, 20), failed=st.booleans())
    def give_back(self, which: int, failed: bool) -> None:
        identity, pooled = self.held.pop(which % len(self.held))
        self.run(lambda: self.pool.release(self.runtime, pooled, identity=identity, failed=failed))
        if failed:
            assert pooled not in self.pooled()

    @precondition(lambda self: self.held)
    @rule(which=st.integers(0, 20))
    def finish_a_request(self, which: int) -> None:
        """A request on a held session, released as `forward` releases it: failed if the call broke."""
        identity, pooled = self.held.pop(which % len(self.held))
        broke = False
        try:
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            self.loop.run_until_complete(pooled.session.request(ping, timeout=1))
        except UpstreamClosed:
            broke = True
        assert broke == (pooled.session.closed or (isinstance(pooled.session, FakeSession) and pooled.session.broken))
        self.run(lambda: self.pool.release(self.runtime, pooled, identity=identity, failed=broke))

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.run(self.pool.sweep)

    @rule()
    def evict_everything(self) -> None:
        before = len(self.pooled())
        evicted = self.loop.run_until_complete(self.pool.evict_server(self.runtime.id, EvictionReason.MANUAL))
        self.run(lambda: None)
        assert evicted == before and not self.pooled()

    @rule(which=st.integers(0, 20))
    def break_a_session(self, which: int) -> None:
        live = [session for session in self.runtime.opened if not session.closed and not session.broken]
        if live:
            live[which % len(live)].broken = True

    @rule(which=st.integers(0, 20))
    def upstream_forgets_a_session(self, which: int) -> None:
        live = [pooled.session for pooled in self.pooled() if not pooled.session.closed]
        if live:
            live[which % len(live)]._mark_closed("upstream_closed", "HTTP 404")

    @rule()
    def upstream_refuses_or_recovers(self) -> None:
        self.runtime.refuse = not self.runtime.refuse

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def sizes_agree(self) -> None:
        pooled = self.pooled()
        [(server_id, in_use, size, state)] = self.pool.occupancy()
        described = self.pool.describe(server_id)
        idle = sum(1 for session in described["sessions"] if session["state"] == "idle")
        listed = [session for session in described["sessions"] if session["state"] != "retiring"]
        assert size == len(pooled) == described["size"] == len(listed) <= self.config.max_sessions
        assert in_use + idle == size
        assert state == ["closed", "half_open", "open"].index(described["breaker"]["state"])
        assert described["breaker"]["state"] != "half_open"  # no probe outlives its acquire

    @invariant()
    def every_acquire_is_a_hit_or_a_miss(self) -> None:
        assert self.observer.hits + self.observer.misses == self.acquired
        assert self.observer.acquires == self.attempts
        assert self.runtime.in_flight == len(self.held)

    @invariant()
    def describe_matches_who_holds_what(self) -> None:
        described = self.pool.describe(self.runtime.id)["sessions"]
        # Evicted sessions still running a request are listed after the pooled ones, until released.
        retiring = list({id(pooled): pooled for _, pooled in self.held if pooled.retiring}.values())
        listed, listed_retiring = described[: len(self.pooled())], described[len(self.pooled()) :]
        assert sorted(s["in_use"] for s in listed_retiring) == sorted(pooled.in_use for pooled in retiring)
        assert all(s["state"] == "retiring" and s["in_use"] > 0 for s in listed_retiring)
        for pooled, session in zip(self.pooled(), listed, strict=True):
            holders = self.holders(pooled)
            assert pooled.in_use == session["in_use"] == len(holders)
            assert session["state"] == ("in_use" if holders else "idle")
            assert session["identity"] == (pooled.identity or "*")
            assert all(self.key(identity) == pooled.identity for identity in holders)  # never across identities
            assert not pooled.retiring
        for _, pooled in self.held:
            assert pooled.in_use == len(self.holders(pooled))

    @invariant()
    def every_session_is_pooled_or_evicted_and_then_closed(self) -> None:
        pooled = {id(pooled.session) for pooled in self.pooled()}
        held = {id(pooled.session) for _, pooled in self.held}
        assert len(pooled) == len(self.pooled())  # one pooled per HTTP session
        assert set(self.observer.evictions) <= REASONS
        assert len(self.runtime.opened) == len(pooled) + sum(self.observer.evictions.values())
        for session in self.runtime.opened:
            assert session.closes <= 1
            if id(session) in pooled or id(session) in held:
                assert session.closes == 0  # never closed under a holder or while pooled
            else:
                assert session.closed, "an evicted session nobody holds was left open"

    def teardown(self) -> None:
        try:
            self.loop.run_until_complete(self.pool.close())
            self.run(lambda: None)
            held = {id(pooled.session) for _, pooled in self.held}
            assert all(session.closed for session in self.runtime.opened if id(session) not in held)
        finally:
            self.loop.close()


PoolMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPool = PoolMachine.TestCase


def test_one_scripted_run_reaches_every_outcome() -> None:
    """The rules driven by hand through every eviction reason and every acquire failure, counted exactly."""
    machine = PoolMachine()
    try:
        machine.configure(
            PoolConfig(
                max_sessions=2,
                max_sessions_per_key=1,
                max_requests_per_session=1,
                acquire_timeout=0.001,
                ttl=5,
                idle_ttl=3,
                health_check_interval=2,
                failure_threshold=1,
                cooldown=4,
            )
        )
        checks = [
            machine.sizes_agree,
            machine.every_acquire_is_a_hit_or_a_miss,
            machine.describe_matches_who_holds_what,
            machine.every_session_is_pooled_or_evicted_and_then_closed,
        ]

        def step(action: Callable[[], Any]) -> Any:
            result = action()
            for check in checks:
                check()
            return result

        assert step(lambda: machine.acquire("alice")) is not None
        assert step(lambda: machine.acquire("alice")) is None  # its one session is busy: pool_exhausted
        step(lambda: machine.give_back(0, False))
        step(lambda: machine.time_passes(2.5))  # due for a health check, not yet idle too long
        step(lambda: machine.break_a_session(0))
        assert step(lambda: machine.acquire("alice")) is None  # health_check; the breaker opens: circuit_open
        step(lambda: machine.time_passes(6.0))
        assert step(lambda: machine.acquire("alice")) is not None  # the probe
        step(lambda: machine.give_back(0, False))
        step(machine.upstream_refuses_or_recovers)
        assert step(lambda: machine.acquire("bob")) is None  # unavailable; the breaker opens: circuit_breaker
        step(machine.upstream_refuses_or_recovers)
        step(lambda: machine.time_passes(6.0))
        assert step(lambda: machine.acquire("alice")) is not None
        step(lambda: machine.give_back(0, False))
        assert step(lambda: machine.acquire("bob")) is not None
        assert step(lambda: machine.acquire("carol")) is not None  # alice's idle session makes room: capacity
        step(lambda: machine.give_back(0, False))
        step(lambda: machine.give_back(0, False))
        step(lambda: machine.time_passes(3.5))  # bob's and carol's sessions: idle
        assert step(lambda: machine.acquire("carol")) is not None
        step(lambda: machine.time_passes(6.0))  # ttl_expired while in use
        step(lambda: machine.give_back(0, False))
        assert step(lambda: machine.acquire("carol")) is not None
        step(lambda: machine.upstream_forgets_a_session(0))
        step(lambda: machine.give_back(0, False))  # upstream_closed
        assert step(lambda: machine.acquire("carol")) is not None
        step(machine.evict_everything)  # manual, while in use
        step(lambda: machine.give_back(0, False))

        assert machine.observer.evictions == {
            "health_check": 1,
            "circuit_breaker": 1,
            "capacity": 1,
            "idle": 2,
            "ttl_expired": 1,
            "upstream_closed": 1,
            "manual": 1,
        }
        assert (machine.observer.hits, machine.observer.misses, machine.observer.health_check_failures) == (0, 8, 1)
        assert len(machine.runtime.opened) == 8 and all(session.closed for session in machine.runtime.opened)
    finally:
        machine.teardown()
