"""Scale-out, shown: three gateway replicas on loopback, one real Prometheus scraping all three.

Load is spread across the replicas and two stdio servers, a different count on each. Each
replica's `/metrics` holds only its own share; `sum by (server_id) (increase(...))` over the three
equals what the clients counted, to the request. The session tests show why replicas need sticky
routing: a session lives on the replica that issued it, and any other replica answers 404.
docs/scaling.md is the operator's side of this.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.mcp import error_message, mcp_session, raw_initialize, rpc
from tests.support.metrics import scrape
from tests.support.processes import Gateway, demo_server, start_gateway, stop_gateway
from tests.support.waiting import wait_for
from tests.telemetry.prometheus import Prometheus, run_prometheus

SERVERS = ("alpha", "beta")
# tools/call requests per replica and server: 7, 11 and 13 in all per replica, no two cells alike.
LOAD = ({"alpha": 4, "beta": 3}, {"alpha": 5, "beta": 6}, {"alpha": 9, "beta": 2})
TOOL_CALLS = 'job="mcp-gateway",method="tools/call"'
CALLS = f"mcp_gateway_requests_total{{{TOOL_CALLS}}}"
SESSION_NOT_FOUND = "Session not found: it ended or never existed; initialize a new one"

Sent = Counter[tuple[str, str]]  # successful tools/call requests by (instance, server_id)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Gateway]]:
    """Three replicas of one config, each with its own `gateway.id` (a pod's default: its host name)."""
    started: list[Gateway] = []
    try:
        for index in range(len(LOAD)):
            servers = {server: demo_server(lazy=False) for server in SERVERS}
            workdir = tmp_path_factory.mktemp(f"replica-{index}")
            started.append(start_gateway(workdir, servers, {"id": f"replica-{index}"}))
        yield started
    finally:
        for gw in started:
            stop_gateway(gw)


def _instance(gw: Gateway) -> str:
    """The `instance` label Prometheus gives the replica's target."""
    return f"127.0.0.1:{gw.port}"


# -- 1. Prometheus adds the replicas up -----------------------------------------------------------


async def _spread(replicas: list[Gateway], load: list[dict[str, int]]) -> Sent:
    """Every replica's share of `load` at once, one client session per replica and server."""
    sent: Sent = Counter()

    async def drive(gw: Gateway, server: str, times: int) -> None:
        async with mcp_session(gw.url(server)) as session:
            for n in range(times):
                result = await session.call_tool("add", {"a": n, "b": 1})
                if not result.is_error and result.structured_content == {"result": n + 1}:
                    sent[(_instance(gw), server)] += 1

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for gw, counts in zip(replicas, load, strict=True):
                for server, times in counts.items():
                    group.start_soon(drive, gw, server, times)
    return sent


def _per(sent: Sent, position: int) -> dict[str, int]:
    """`sent` summed by instance (position 0) or by server (1)."""
    totals: Counter[str] = Counter()
    for key, count in sent.items():
        totals[key[position]] += count
    return dict(totals)


def _vector(prometheus: Prometheus, promql: str, *labels: str) -> dict[Any, float]:
    """An instant vector as {label value (or tuple of them): value}."""
    found = {}
    for item in prometheus.query(promql):
        key = tuple(item["metric"][label] for label in labels)
        found[key if len(key) > 1 else key[0]] = item["value"]
    return found


def _scraped_after(prometheus: Prometheus, moment: int) -> None:
    """Wait until each replica has a sample from after `moment`: its scrapes before it are all stored."""
    query = f"min(timestamp({CALLS}))"

    def after() -> bool:
        found = prometheus.query(query)
        return bool(found) and found[0]["value"] > moment

    try:
        wait_for(after, 30, f"{query} > {moment}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; targets: {prometheus.targets()}") from None


@pytest.mark.anyio
async def test_prometheus_adds_the_replicas_up_to_what_the_clients_counted(
    replicas: list[Gateway], tmp_path: Path
) -> None:
    instances = [_instance(gw) for gw in replicas]
    with run_prometheus(tmp_path, instances) as prometheus:
        prometheus.wait_for_value('count(up{job="mcp-gateway"} == 1)', len(replicas))

        # One call per replica and server first: a series is created by its first request, and
        # increase() needs a sample of every series from before the load to count from.
        warm = await _spread(replicas, [dict.fromkeys(SERVERS, 1)] * len(replicas))
        prometheus.wait_for_value(f"sum({CALLS})", sum(warm.values()))
        start = math.ceil(time.time())
        _scraped_after(prometheus, start)

        load = await _spread(replicas, list(LOAD))
        expected = {
            (gw_instance, server): n
            for gw_instance, counts in zip(instances, LOAD, strict=True)
            for server, n in counts.items()
        }
        assert load == expected, load  # every call succeeded, as the client saw it
        for server, count in _per(warm + load, 1).items():
            prometheus.wait_for_value(f'sum(mcp_gateway_requests_total{{{TOOL_CALLS},server_id="{server}"}})', count)
        end = math.ceil(time.time())
        _scraped_after(prometheus, end)

        # increase() extrapolates to the ends of its range unless a sample sits on each end: over
        # these few seconds a plain [Ns] range answered up to half as much again as was sent. A
        # 1s-step subquery from `start` to `end`, both whole seconds, puts a sample on each end, so
        # the answer is exact: each counter at `end` less the same counter at `start`.
        window = f"[{end - start}s:1s] @ {end}"
        fleet = _vector(prometheus, f"sum by (server_id) (increase({CALLS}{window}))", "server_id")
        assert fleet == _per(load, 1), fleet
        shares = _vector(prometheus, f"sum by (instance) (increase({CALLS}{window}))", "instance")
        assert shares == _per(load, 0), shares
        cells = _vector(prometheus, f"increase({CALLS}{window})", "instance", "server_id")
        assert cells == load, cells
        # And without increase(): the raw counters, summed over the replicas, warm-up included.
        raw = _vector(prometheus, f"sum without (instance) ({CALLS})", "server_id")
        assert raw == _per(warm + load, 1), raw

        # Each replica's own page holds its share and no more: no one /metrics has the fleet's count.
        for gw in replicas:
            page = scrape(gw)
            for server in SERVERS:
                own = page.total("mcp_gateway_requests_total", server_id=server, method="tools/call")
                assert own == (warm + load)[(_instance(gw), server)], (gw.base, server, own)

        # Three targets, each with its own identity: scrape instance, gateway id, OTel resource.
        targets = prometheus.targets()
        assert sorted(t["labels"]["instance"] for t in targets) == sorted(instances), targets
        assert all(t["health"] == "up" for t in targets), targets
        info = prometheus.query('target_info{job="mcp-gateway"}')
        assert {i["metric"]["mcp_gateway_id"] for i in info} == {f"replica-{n}" for n in range(len(replicas))}, info
        assert len({i["metric"]["service_instance_id"] for i in info}) == len(replicas), info
        # Every replica runs its own copy of every stdio server.
        copies = _vector(prometheus, "count by (server_id) (mcp_server_memory_bytes)", "server_id")
        assert copies == dict.fromkeys(SERVERS, len(replicas)), copies


# -- 2. sessions live on one replica ----------------------------------------------------------------

ECHO = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}


def test_a_session_is_answered_only_by_the_replica_that_issued_it(replicas: list[Gateway]) -> None:
    issuer, other = replicas[0], replicas[1]
    path = f"/servers/{SERVERS[0]}/mcp"
    session_id = raw_initialize(issuer, path)

    answered = rpc(issuer, path, ECHO, session_id)
    assert answered.status_code == 200, answered.text
    assert answered.json()["result"]["content"][0]["text"] == "hi"

    # The MCP spec's answer to a session the server does not hold: 404, which tells the client
    # to initialize again. The body is a JSON-RPC error so clients can show why.
    elsewhere = rpc(other, path, ECHO, session_id)
    assert elsewhere.status_code == 404, elsewhere.text
    assert elsewhere.json() == {
        "jsonrpc": "2.0",
        "id": ECHO["id"],  # the error answers the request it refuses
        "error": {"code": -32600, "message": SESSION_NOT_FOUND},
    }
    # No session-less requests either: everything after initialize names its session.
    bare = rpc(other, path, ECHO)
    assert bare.status_code == 400, bare.text
    assert error_message(bare) == "Bad Request: Mcp-Session-Id header is required (initialize first)"

    # The way back is a new session, on whichever replica the client reaches now.
    fresh = raw_initialize(other, path)
    assert rpc(other, path, ECHO, fresh).status_code == 200
    assert rpc(issuer, path, ECHO, session_id).status_code == 200  # the first one still lives where it was made


class _Balancer(httpx2.AsyncBaseTransport):
    """A load balancer that is not sticky, reduced to a switch: each request goes to `target`."""

    def __init__(self, target: Gateway) -> None:
        self.target = target
        self._wire = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.url = request.url.copy_with(port=self.target.port)
        return await self._wire.handle_async_request(request)

    async def aclose(self) -> None:
        await self._wire.aclose()


@pytest.mark.anyio
async def test_the_official_client_moved_to_another_replica_must_initialize_again(replicas: list[Gateway]) -> None:
    balancer = _Balancer(replicas[0])
    path = f"/servers/{SERVERS[0]}/mcp"
    with anyio.fail_after(60):
        async with mcp_session(balancer.target.base + path, transport=balancer) as session:
            assert (await session.call_tool("echo", {"text": "one"})).content[0].text == "one"  # type: ignore[union-attr]
            balancer.target = replicas[1]  # the replica went away, or routing was not sticky
            # The SDK does not initialize again by itself: the call fails with the gateway's message.
            with pytest.raises(MCPError) as lost:
                await session.call_tool("echo", {"text": "two"})
            assert (lost.value.code, lost.value.message) == (-32600, SESSION_NOT_FOUND)
        async with mcp_session(balancer.target.base + path, transport=balancer) as session:
            assert (await session.call_tool("echo", {"text": "three"})).content[0].text == "three"  # type: ignore[union-attr]
