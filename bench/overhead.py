"""What the gateway adds to a `tools/call`: latency, throughput and the gateway's CPU per call.

In one run, side by side: the official MCP client calling an SDK-built upstream directly, and the
same client calling it through a real `mcp-gateway` process, for a streamable-HTTP upstream and a
stdio upstream; with the client on the 2025 handshake (`http`, `stdio` arms) and pinned to MCP
2026-07-28 (`http26`, `stdio26`). The upstreams serve both eras, and the gateway speaks 2026-07-28
to them. Prints a table and writes JSON (default `bench/results/overhead.json`).

    .venv/bin/python bench/overhead.py            # full run (a few minutes)
    .venv/bin/python bench/overhead.py --smoke    # seconds; what the test suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import httpx2
import psutil
import yaml
from mcp import Client, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the tests' helpers and servers are this checkout's

from tests.support import processes  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

PY = sys.executable
DEMO = StdioServerParameters(command=PY, args=["-m", "gateway.demo_server"], cwd=str(REPO))


def wait_ready(url: str, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def start_http_upstream(*flags: str) -> tuple[subprocess.Popen[str], str]:
    """The SDK-built test upstream (`--json-response` here: the benchmark's HTTP arm); (process, MCP URL)."""
    upstream = processes.start_http_upstream("--json-response", *flags)
    return upstream.proc, upstream.url


def start_gateway(
    servers: dict[str, Any],
    workdir: Path,
    *,
    loop: str = "auto",
    repo: Path = REPO,
    sections: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """A gateway on a free port serving `servers` (and further config `sections`, e.g. `telemetry`);
    `repo` is the checkout it runs from (another commit's, for a baseline)."""
    port = free_port()
    config = {**(sections or {}), "gateway": {"id": "bench", "port": port}, "servers": servers}
    path = workdir / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (workdir / f"gateway-{port}.log").open("wb")
    proc = subprocess.Popen(  # `-m gateway` imports the package of its working directory first
        [PY, "-m", "gateway", "serve", "--config", str(path), "--log-level", "warning", "--loop", loop],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=repo,
        env={**os.environ, **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/readyz", proc)
    return proc, base


def bench_servers(upstream_url: str) -> dict[str, Any]:
    """The two servers every arm calls through a gateway: the HTTP upstream and the stdio demo."""
    return {
        "remote": {"url": upstream_url, "lazy": False},
        "demo": {"command": PY, "args": ["-m", "gateway.demo_server"], "lazy": False},
    }


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@dataclass
class Result:
    arm: str
    concurrency: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float
    calls_per_s: float
    gateway_cpu_ms_per_call: float | None = None
    latencies: list[float] = field(default_factory=list, repr=False)


class Caller(Protocol):
    """What an arm calls: a 2025 `ClientSession` or a 2026 `Client`."""

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any: ...


Connect = Callable[[], AbstractAsyncContextManager[Caller]]


def http_connect(url: str) -> Connect:
    @asynccontextmanager
    async def connect() -> AsyncIterator[Caller]:
        client = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=120.0))
        async with (
            client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session

    return connect


def modern_connect(target: str | StdioServerParameters) -> Connect:
    """The SDK's `Client` pinned to MCP 2026-07-28: one self-contained POST (or stdio line) per call."""

    @asynccontextmanager
    async def connect() -> AsyncIterator[Caller]:
        if isinstance(target, str):
            http = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=120.0))
            async with http, Client(streamable_http_client(target, http_client=http), mode="2026-07-28") as client:
                yield client
        else:
            async with Client(target, mode="2026-07-28") as client:
                yield client

    return connect


def stdio_connect() -> Connect:
    params = DEMO

    @asynccontextmanager
    async def connect() -> AsyncIterator[Caller]:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session

    return connect


async def run_arm(
    arm: str, connect: Connect, tool: str, concurrency: int, calls: int, gateway_pid: int | None
) -> Result:
    """`concurrency` sessions share `calls` sequential-per-session echo calls after a warm-up."""
    per_session = max(1, calls // concurrency)
    latencies: list[float] = []
    ready = asyncio.Barrier(concurrency + 1)
    done = asyncio.Barrier(concurrency + 1)

    async def worker() -> None:
        async with connect() as session:
            for _ in range(20):
                await session.call_tool(tool, {"text": "warm"})
            await ready.wait()
            for i in range(per_session):
                started = time.perf_counter()
                await session.call_tool(tool, {"text": f"call {i}"})
                latencies.append(time.perf_counter() - started)
            await done.wait()

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await ready.wait()
    cpu_before = cpu_seconds(gateway_pid) if gateway_pid else 0.0
    started = time.perf_counter()
    await done.wait()
    elapsed = time.perf_counter() - started
    cpu_after = cpu_seconds(gateway_pid) if gateway_pid else 0.0
    await asyncio.gather(*tasks)
    ordered = sorted(latencies)
    total = len(ordered)
    return Result(
        arm=arm,
        concurrency=concurrency,
        calls=total,
        seconds=elapsed,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[min(total - 1, int(total * 0.99))] * 1000,
        calls_per_s=total / elapsed,
        gateway_cpu_ms_per_call=(cpu_after - cpu_before) * 1000 / total if gateway_pid else None,
    )


async def bench(calls: int, concurrencies: list[int], rounds: int, baseline: Path | None = None) -> list[Result]:
    upstream, upstream_url = start_http_upstream()
    workdir = Path(tempfile.mkdtemp(prefix="mcp-gateway-bench-"))
    # The gateway as it runs by default (uvloop), and on the standard library's loop.
    servers = bench_servers(upstream_url)
    gateway, base = start_gateway(servers, workdir)
    stdlib, stdlib_base = start_gateway(servers, workdir, loop="asyncio")
    gateways: list[subprocess.Popen[bytes]] = [gateway, stdlib]
    arms: list[tuple[str, Connect, str, int | None]] = [
        ("http direct", http_connect(upstream_url), "echo", None),
        ("http via gateway", http_connect(f"{base}/servers/remote/mcp"), "echo", gateway.pid),
        ("http via gw/asyncio", http_connect(f"{stdlib_base}/servers/remote/mcp"), "echo", stdlib.pid),
        ("stdio direct", stdio_connect(), "echo", None),
        ("stdio via gateway", http_connect(f"{base}/servers/demo/mcp"), "echo", gateway.pid),
        ("stdio via gw/asyncio", http_connect(f"{stdlib_base}/servers/demo/mcp"), "echo", stdlib.pid),
        # MCP 2026-07-28 end to end: the client pinned to it; the servers (dual-era) are spoken to in it too.
        ("http26 direct", modern_connect(upstream_url), "echo", None),
        ("http26 via gateway", modern_connect(f"{base}/servers/remote/mcp"), "echo", gateway.pid),
        ("stdio26 direct", modern_connect(DEMO), "echo", None),
        ("stdio26 via gateway", modern_connect(f"{base}/servers/demo/mcp"), "echo", gateway.pid),
    ]
    if baseline is not None:  # another commit's gateway, beside this one: before and after in one run
        old, old_base = start_gateway(servers, workdir, repo=baseline)
        gateways.append(old)
        arms += [
            ("http via baseline", http_connect(f"{old_base}/servers/remote/mcp"), "echo", old.pid),
            ("stdio via baseline", http_connect(f"{old_base}/servers/demo/mcp"), "echo", old.pid),
        ]
    results: list[Result] = []
    try:
        # Rounds interleave the arms so that a noisy neighbour hurts them all alike.
        for _ in range(rounds):
            for concurrency in concurrencies:
                for arm, connect, tool, pid in arms:
                    results.append(await run_arm(arm, connect, tool, concurrency, calls, pid))
    finally:
        upstream.send_signal(signal.SIGTERM)
        for proc in gateways:
            proc.send_signal(signal.SIGTERM)
        for gateway_proc in gateways:
            gateway_proc.wait(30)
        upstream.wait(30)
    return results


def summarize(results: list[Result]) -> list[dict[str, Any]]:
    """Median over rounds, per arm and concurrency, plus the ratio against the direct arm."""
    rows: list[dict[str, Any]] = []
    keys = sorted({(r.concurrency, r.arm) for r in results}, key=lambda k: (k[0], k[1]))
    for concurrency, arm in keys:
        group = [r for r in results if r.arm == arm and r.concurrency == concurrency]
        cpu = [r.gateway_cpu_ms_per_call for r in group if r.gateway_cpu_ms_per_call is not None]
        rows.append(
            {
                "arm": arm,
                "concurrency": concurrency,
                "p50_ms": statistics.median(r.p50_ms for r in group),
                "p99_ms": statistics.median(r.p99_ms for r in group),
                "calls_per_s": statistics.median(r.calls_per_s for r in group),
                "gateway_cpu_ms_per_call": statistics.median(cpu) if cpu else None,
            }
        )
    for row in rows:
        transport = row["arm"].split()[0]
        direct = next(r for r in rows if r["arm"] == f"{transport} direct" and r["concurrency"] == row["concurrency"])
        row["added_p50_ms"] = row["p50_ms"] - direct["p50_ms"]
        row["throughput_ratio"] = row["calls_per_s"] / direct["calls_per_s"]
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'arm':<20} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'calls/s':>8} {'ratio':>6}"
        f" {'gw CPU ms/call':>15}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        cpu = row["gateway_cpu_ms_per_call"]
        print(
            f"{row['arm']:<20} {row['concurrency']:>4} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
            f"{row['added_p50_ms']:>8.3f} {row['calls_per_s']:>8.0f} {row['throughput_ratio']:>6.2f} "
            f"{'' if cpu is None else f'{cpu:.3f}':>15}"
        )


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per arm and concurrency")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated session counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a few calls, to check the benchmark runs")
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "overhead.json"))
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another commit (e.g. `git worktree add ../base HEAD~1`): its gateway runs as more arms",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.calls, args.concurrency, args.rounds = 40, "1,4", 1
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results = asyncio.run(bench(args.calls, concurrencies, args.rounds, args.baseline))
    rows = summarize(results)
    print_table(rows)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "args": {**vars(args), "baseline": str(args.baseline) if args.baseline else None},
                "summary": rows,
                "runs": [asdict(r) for r in results],
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
