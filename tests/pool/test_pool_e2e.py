"""The session pool end to end: a real gateway, real upstreams, the official client, and Prometheus.

What is asserted is what the upstream saw (the session id its `whoami` tool reports), what the pool
says about itself (`GET /servers/{id}/sessions`) and what `/metrics` says, which must all agree:
isolation by caller identity, multiplexing, manual eviction, a dying upstream, the circuit breaker
and health checks. Every wait is a condition polled under a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from mcp import ClientSession
from mcp.shared.exceptions import MCPError

from tests.support.mcp import initialize_error, mcp_session, while_sleeping
from tests.support.metrics import Metrics, scrape
from tests.support.paths import PY
from tests.support.processes import Gateway, Upstream, demo_server, start_http_upstream
from tests.support.waiting import eventually, wait_for
from tests.telemetry.prometheus import Prometheus, run_prometheus

pytestmark = pytest.mark.anyio

REMOTE, DEMO, BROKEN = "remote", "demo", "broken"
GATEWAY_ID = "test-gw"
TOKEN_A = "pool-token-A-5c1e"
TOKEN_B = "pool-token-B-93fa"
AUTH = {"auth": {"tokens": [TOKEN_A, TOKEN_B]}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def identity(token: str) -> str:
    """The identity hash the gateway keys sessions by (docs/session-pool.md)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


async def until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """`eventually`, with each (blocking) check run off the event loop: clients' calls go on meanwhile."""
    return await eventually(lambda: anyio.to_thread.run_sync(condition), timeout, what)


async def whoami(session: ClientSession, aggregate: bool = False) -> str:
    """The upstream MCP session id this call ran on, as the upstream itself reports it."""
    result = await session.call_tool(f"{REMOTE}__whoami" if aggregate else "whoami", {})
    assert not result.is_error, result
    session_id = json.loads(result.content[0].text)["session_id"]  # type: ignore[union-attr]
    assert session_id, result
    return str(session_id)


def pool(metrics: Metrics, family: str, server: str, **labels: str) -> float:
    return metrics.total(f"mcp_session_pool_{family}", gateway_id=GATEWAY_ID, server_id=server, **labels)


def sessions(gw: Gateway, server: str) -> dict[str, Any]:
    response = gw.get(f"/servers/{server}/sessions")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def remote_gateway(factory: Callable[..., Gateway], upstream: Upstream, **pool_config: Any) -> Gateway:
    server: dict[str, Any] = {"url": upstream.url, "protocol": "2025"}
    if pool_config:
        server["pool"] = pool_config
    return factory({REMOTE: server}, AUTH)


# -- 1. isolation and multiplexing -----------------------------------------------------------------


async def test_identities_never_share_an_upstream_session_and_one_identity_multiplexes(
    gateway_factory: Any, http_upstream: Upstream
) -> None:
    gw = remote_gateway(gateway_factory, http_upstream)
    direct, aggregate = gw.url(REMOTE), gw.url()
    seen: dict[str, list[str]] = {TOKEN_A: [], TOKEN_B: []}
    with anyio.fail_after(90):
        async with AsyncExitStack() as stack:
            # Four client sessions of A, two on each endpoint; one of B on each.
            clients: dict[str, list[tuple[ClientSession, bool]]] = {TOKEN_A: [], TOKEN_B: []}
            for token, copies in ((TOKEN_A, 2), (TOKEN_B, 1)):
                for _ in range(copies):
                    for url, through_aggregate in ((direct, False), (aggregate, True)):
                        session = await stack.enter_async_context(mcp_session(url, bearer(token)))
                        clients[token].append((session, through_aggregate))

            async def call(token: str, session: ClientSession, through_aggregate: bool) -> None:
                seen[token].append(await whoami(session, through_aggregate))

            # 20 calls of A at once across its 4 sessions, and B's calls alongside them.
            async with anyio.create_task_group() as group:
                for i in range(20):
                    session, through_aggregate = clients[TOKEN_A][i % 4]
                    group.start_soon(call, TOKEN_A, session, through_aggregate)
                for i in range(6):
                    session, through_aggregate = clients[TOKEN_B][i % 2]
                    group.start_soon(call, TOKEN_B, session, through_aggregate)

    # Multiplexed for real: four calls of A in flight at once, on four client sessions, share one upstream session.
    async def four_on_one() -> None:
        await until(lambda: _in_use(gw, TOKEN_A) == [4], "four calls of A in flight on one session")
        assert sessions(gw, REMOTE)["size"] == 2

    direct_path, aggregate_path = f"/servers/{REMOTE}/mcp", "/mcp"
    calls = [(direct_path, "sleep"), (aggregate_path, f"{REMOTE}__sleep")] * 2
    with anyio.fail_after(60):
        await while_sleeping(gw, calls, four_on_one)
    assert _in_use(gw, TOKEN_A) == [0]

    assert len(seen[TOKEN_A]) == 20 and len(seen[TOKEN_B]) == 6
    upstream_a, upstream_b = set(seen[TOKEN_A]), set(seen[TOKEN_B])
    assert len(upstream_a) == 1, f"A's calls ran on several upstream sessions: {upstream_a}"
    assert len(upstream_b) == 1, f"B's calls ran on several upstream sessions: {upstream_b}"
    assert upstream_a != upstream_b, "A and B shared an upstream session"

    pooled = sessions(gw, REMOTE)
    assert sorted(s["identity"] for s in pooled["sessions"]) == sorted([identity(TOKEN_A), identity(TOKEN_B)])
    metrics = scrape(gw)
    acquisitions = pool(metrics, "acquire_duration_seconds_count", REMOTE)
    assert pool(metrics, "misses_total", REMOTE) == 2  # one per identity, concurrent first uses included
    assert pool(metrics, "hits_total", REMOTE) == acquisitions - 2
    assert acquisitions >= 26 + 4 + 6  # the calls, the sleeps, the initializes; and the clients' tools/list
    assert pool(metrics, "size", REMOTE) == 2


def _in_use(gw: Gateway, token: str) -> list[int]:
    """Requests in flight on each of one caller's pooled sessions."""
    return [s["in_use"] for s in sessions(gw, REMOTE)["sessions"] if s["identity"] == identity(token)]


# -- 2. manual eviction ------------------------------------------------------------------------------


async def test_delete_evicts_every_session_and_closes_it_upstream(
    gateway_factory: Any, http_upstream: Upstream
) -> None:
    gw = remote_gateway(gateway_factory, http_upstream)
    with anyio.fail_after(60):
        async with (
            mcp_session(gw.url(REMOTE), bearer(TOKEN_A)) as a,
            mcp_session(gw.url(), bearer(TOKEN_B)) as b,
        ):
            first_a, first_b = await whoami(a), await whoami(b, aggregate=True)
            assert first_a != first_b

            listed = sessions(gw, REMOTE)
            assert listed["breaker"] == {"state": "closed", "consecutive_failures": 0}
            assert listed["size"] == 2
            by_identity = {s["identity"]: s for s in listed["sessions"]}
            assert by_identity.keys() == {identity(TOKEN_A), identity(TOKEN_B)}
            for entry in by_identity.values():
                assert entry["state"] == "idle" and entry["in_use"] == 0, entry
                assert entry["age_seconds"] >= entry["idle_seconds"] >= 0, entry
            assert TOKEN_A not in json.dumps(listed) and TOKEN_B not in json.dumps(listed)

            deleted = await anyio.to_thread.run_sync(lambda: gw.delete_sessions(REMOTE))
            assert deleted.status_code == 200, deleted.text
            assert deleted.json()["evicted"] == 2 and deleted.json()["sessions"] == []
            assert sessions(gw, REMOTE)["size"] == 0

            # The evicted sessions were ended upstream (DELETE): the upstream no longer knows them.
            for old in (first_a, first_b):
                assert _upstream_status(http_upstream, old) == 404

            metrics = scrape(gw)
            assert pool(metrics, "evictions_total", REMOTE, reason="manual") == 2
            misses = pool(metrics, "misses_total", REMOTE)
            assert misses == 2

            # The client sessions with the gateway survive; their next calls get new upstream sessions.
            second_a = await whoami(a)
            assert second_a not in (first_a, first_b)
            assert pool(scrape(gw), "misses_total", REMOTE) == misses + 1
            second_b = await whoami(b, aggregate=True)
            assert second_b not in (first_a, first_b, second_a)
            assert _upstream_status(http_upstream, second_a) == 200  # what a live session answers


def _upstream_status(upstream: Upstream, session_id: str) -> int:
    """What the upstream answers a request on `session_id` (404: it ended that session)."""
    response = httpx.post(
        upstream.url,
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": session_id,
            "MCP-Protocol-Version": "2025-11-25",
        },
        timeout=10,
    )
    return response.status_code


# -- 3. the upstream dies ----------------------------------------------------------------------------


async def test_dead_upstream_fails_the_call_and_a_new_one_gets_a_new_session(gateway_factory: Any) -> None:
    upstream = start_http_upstream("--name", REMOTE)
    try:
        gw = remote_gateway(gateway_factory, upstream)
        with anyio.fail_after(60):
            async with mcp_session(gw.url(REMOTE), bearer(TOKEN_A)) as client:
                before = await whoami(client)

                upstream.proc.kill()
                upstream.proc.wait()
                with pytest.raises(MCPError) as failed:
                    await whoami(client)
                assert failed.value.code == -32000, failed.value.error
                assert REMOTE in failed.value.message, failed.value.error
                assert failed.value.data == {"server": REMOTE, "reason": "transport"}, failed.value.error
                assert pool(scrape(gw), "evictions_total", REMOTE, reason="upstream_closed") == 1
                assert sessions(gw, REMOTE)["size"] == 0

                upstream = start_http_upstream("--port", str(upstream.port), "--name", REMOTE)
                after = await whoami(client)
                assert after != before
        metrics = scrape(gw)
        assert pool(metrics, "misses_total", REMOTE) == 2
        assert pool(metrics, "evictions_total", REMOTE, reason="upstream_closed") == 1
        assert metrics.total("mcp_gateway_errors_total", server_id=REMOTE, error_type="transport") == 1
    finally:
        upstream.stop()


# -- 4. /metrics agrees with the pool ------------------------------------------------------------------


def _occupancy(gw: Gateway, servers: tuple[str, ...]) -> dict[str, tuple[float, float]] | None:
    """(size, active) of every server when /metrics and the pool's own report agree on them, else None.

    Two reads, so a request starting or ending between them can make them differ for a moment.
    """
    metrics = scrape(gw)
    found = {}
    for server in servers:
        pooled = sessions(gw, server)
        in_use = sum(1 for s in pooled["sessions"] if s["state"] == "in_use")
        assert pooled["size"] == len(pooled["sessions"]), pooled
        size, active = pool(metrics, "size", server), pool(metrics, "active_sessions", server)
        if (size, active) != (pooled["size"], in_use):
            return None
        assert pool(metrics, "circuit_state", server) == 0
        found[server] = (size, active)
    return found


def _acquisitions_are_hits_and_misses(gw: Gateway, servers: tuple[str, ...]) -> None:
    """With no request under way (a scrape reads one family after another while requests go on)."""
    metrics = scrape(gw)
    for server in servers:
        acquisitions = pool(metrics, "acquire_duration_seconds_count", server)
        assert acquisitions == pool(metrics, "hits_total", server) + pool(metrics, "misses_total", server) > 0


async def _busy_while_sleeping(gw: Gateway, server: str, servers: tuple[str, ...]) -> None:
    """A `sleep` call in flight holds one session in use; cancelled, it gives the session back."""

    def active(expected: int) -> bool:
        found = _occupancy(gw, servers)
        return found is not None and found[server][1] == expected

    async def one_in_use() -> None:
        await until(lambda: active(1), f"{server}: one session in use, on /metrics as in the pool")
        assert [s["state"] for s in sessions(gw, server)["sessions"]].count("in_use") == 1

    await while_sleeping(gw, [(f"/servers/{server}/mcp", "sleep")], one_in_use)
    await until(lambda: active(0), f"{server}: the session idle again, on /metrics as in the pool")


async def test_pool_gauges_and_counters_agree_with_the_pool(gateway_factory: Any, http_upstream: Upstream) -> None:
    gw = gateway_factory({REMOTE: {"url": http_upstream.url, "protocol": "2025"}, DEMO: demo_server()}, AUTH)
    servers = (REMOTE, DEMO)
    assert _occupancy(gw, servers) == {REMOTE: (0, 0), DEMO: (0, 0)}
    with anyio.fail_after(120):
        for token in (TOKEN_A, TOKEN_B):
            async with mcp_session(gw.url(), bearer(token)) as client:
                await whoami(client, aggregate=True)
                result = await client.call_tool(f"{DEMO}__echo", {"text": "x"})
                assert not result.is_error
        # Per identity for HTTP; the stdio process is one session every caller shares.
        assert _occupancy(gw, servers) == {REMOTE: (2, 0), DEMO: (1, 0)}
        _acquisitions_are_hits_and_misses(gw, servers)
        assert [s["identity"] for s in sessions(gw, DEMO)["sessions"]] == ["*"]
        for server in servers:
            await _busy_while_sleeping(gw, server, servers)
    assert _occupancy(gw, servers) == {REMOTE: (2, 0), DEMO: (1, 0)}
    _acquisitions_are_hits_and_misses(gw, servers)


# -- 5. the circuit breaker ------------------------------------------------------------------------


def test_circuit_breaker_fails_fast_then_lets_one_probe_through(gateway_factory: Any) -> None:
    broken = {
        "command": PY,
        "args": ["-c", "import sys; sys.exit(1)"],
        "pool": {"failure_threshold": 2, "cooldown": 1},
        "restart": {"max_attempts": 100},
    }
    gw = gateway_factory({BROKEN: broken})
    for attempt in (1, 2):
        error = initialize_error(gw, BROKEN)
        assert error["data"]["reason"] == "start_failed", error
        assert sessions(gw, BROKEN)["breaker"]["consecutive_failures"] == attempt
    assert sessions(gw, BROKEN)["breaker"]["state"] == "open"

    fast = initialize_error(gw, BROKEN)
    assert fast["code"] == -32000 and fast["data"] == {"server": BROKEN, "reason": "circuit_open"}, fast
    metrics = scrape(gw)
    assert metrics.value("mcp_gateway_errors_total", server_id=BROKEN, error_type="circuit_open") == 1
    assert metrics.value("mcp_gateway_errors_total", server_id=BROKEN, error_type="unavailable") == 2
    assert pool(metrics, "circuit_state", BROKEN) == 2
    starts = gw.log().count(f"server {BROKEN} failed to start")
    assert starts == 2

    # Open until the cooldown has passed; then exactly one request probes (a start attempt), which fails.
    rejected = 1

    def probed() -> bool:
        nonlocal rejected
        assert sessions(gw, BROKEN)["breaker"]["state"] == "open"
        if initialize_error(gw, BROKEN)["data"]["reason"] == "circuit_open":
            rejected += 1
            return False
        return True

    wait_for(probed, 30, "the cooldown to end and a probe to be let through")
    assert gw.log().count(f"server {BROKEN} failed to start") == starts + 1
    breaker = sessions(gw, BROKEN)["breaker"]
    assert breaker == {"state": "open", "consecutive_failures": 3}, breaker
    assert initialize_error(gw, BROKEN)["data"]["reason"] == "circuit_open"  # failed probe: open again
    metrics = scrape(gw)
    assert metrics.value("mcp_gateway_errors_total", server_id=BROKEN, error_type="circuit_open") == rejected + 1
    assert pool(metrics, "circuit_state", BROKEN) == 2


# -- 6. a real Prometheus answers the feature request's questions --------------------------------------

HIT_RATE = (
    "sum(rate(mcp_session_pool_hits_total[5m])) / (sum(rate(mcp_session_pool_hits_total[5m]))"
    " + sum(rate(mcp_session_pool_misses_total[5m])))"
)
HEALTH_FAILURES = "sum(rate(mcp_session_pool_health_check_failures_total[5m])) by (gateway_id)"


@contextmanager
def stopped(upstream: Upstream) -> Iterator[None]:
    """The upstream process frozen (SIGSTOP): it accepts connections and answers nothing."""
    os.kill(upstream.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(upstream.proc.pid, signal.SIGCONT)


async def _fail_a_health_check(gw: Gateway, upstream: Upstream, client: ClientSession, failures: int) -> None:
    """Let A's session sit idle past the interval, freeze the upstream, call: the ping fails."""

    def idle_past_the_interval() -> bool:
        mine = next(s for s in sessions(gw, REMOTE)["sessions"] if s["identity"] == identity(TOKEN_A))
        return bool(mine["idle_seconds"] > 0.5)

    await until(idle_past_the_interval, "A's session to be idle past health_check_interval")
    async with anyio.create_task_group() as group:
        with stopped(upstream):
            group.start_soon(_call_through_a_freeze, client)
            await until(
                lambda: pool(scrape(gw), "health_check_failures_total", REMOTE) == failures,
                "the health check to fail",
            )
            assert pool(scrape(gw), "evictions_total", REMOTE, reason="health_check") == failures
        # Thawed: the call finishes on a fresh session.


async def _call_through_a_freeze(client: ClientSession) -> None:
    """A call whose health check times out; once thawed, it runs on a new session.

    Creating that session can fail, rarely, on a loaded machine: its initialize went out on a
    keep-alive connection the upstream was closing just then (aiohttp does not retry a POST). What
    is tested here is the health check, so that failure is tolerated, and only that one.
    """
    try:
        await whoami(client)
    except MCPError as exc:
        assert exc.data == {"server": REMOTE, "reason": "connect"}, exc.error


async def test_prometheus_answers_hit_rate_health_failures_and_active_sessions(
    gateway_factory: Any, tmp_path: Path
) -> None:
    upstream = start_http_upstream("--name", REMOTE)
    try:
        gw = gateway_factory(
            {
                REMOTE: {
                    "url": upstream.url,
                    "protocol": "2025",
                    "pool": {"health_check_interval": 0.5, "health_check_timeout": 0.5},
                },
                DEMO: demo_server(),
            },
            AUTH,
        )
        with run_prometheus(tmp_path, [f"127.0.0.1:{gw.port}"]) as prometheus:
            prometheus.wait_for_value('up{job="mcp-gateway"}', 1)
            with anyio.fail_after(120):
                async with mcp_session(gw.url(REMOTE), bearer(TOKEN_A)) as a:
                    await whoami(a)  # a miss, then the counters exist for Prometheus to rate from
                    await _seen(prometheus, gw, "hits_total")
                    async with mcp_session(gw.url(), bearer(TOKEN_B)) as b:
                        for _ in range(5):
                            await whoami(a)
                            await whoami(b, aggregate=True)
                        await b.call_tool(f"{DEMO}__echo", {"text": "x"})
                    for failures in (1, 2):  # two, so the rate over the window is above zero
                        await _fail_a_health_check(gw, upstream, a, failures)
                        await _seen(prometheus, gw, "health_check_failures_total")
                    await _seen(prometheus, gw, "hits_total")
                    await _seen(prometheus, gw, "misses_total")

            [hit_rate] = prometheus.query(HIT_RATE)
            assert 0 < hit_rate["value"] <= 1, hit_rate
            assert hit_rate["value"] < 1, hit_rate  # B's first call and each call after a failed check missed
            [failure_rate] = prometheus.query(HEALTH_FAILURES)
            assert failure_rate["metric"] == {"gateway_id": GATEWAY_ID}, failure_rate
            assert failure_rate["value"] > 0, failure_rate
            active = prometheus.query("mcp_session_pool_active_sessions")
            assert {(s["metric"]["gateway_id"], s["metric"]["server_id"]) for s in active} == {
                (GATEWAY_ID, REMOTE),
                (GATEWAY_ID, DEMO),
            }, active
            assert all(s["value"] == 0 for s in active), active
    finally:
        upstream.stop()


async def _seen(prometheus: Prometheus, gw: Gateway, family: str) -> None:
    """Wait until Prometheus has scraped the gateway's current value of one pool counter."""
    value = pool(scrape(gw), family, REMOTE)
    query = f'mcp_session_pool_{family}{{server_id="{REMOTE}"}}'
    await anyio.to_thread.run_sync(lambda: prometheus.wait_for_value(query, value))
