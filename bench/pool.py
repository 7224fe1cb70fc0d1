"""Pooled vs. unpooled upstream sessions, and what a pool hit costs.

In one run, side by side, raw JSON-RPC clients call `echo` on an SDK-built streamable-HTTP upstream:
directly; through the gateway with its session pool (sessions reused); and through the gateway with
sessions that expire at once (`pool.ttl` of a microsecond: every call opens a fresh upstream
session, the way a gateway without a pool works). Then, in-process, the cost of one acquire +
release on a hit. Prints a table and writes JSON (default `bench/results/pool.json`).

    .venv/bin/python bench/pool.py            # full run
    .venv/bin/python bench/pool.py --smoke    # seconds; what the test suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import PY, REPO, cpu_seconds, machine, start_gateway, start_http_upstream
from bench.telemetry import load


async def arms(calls: int, concurrencies: list[int], rounds: int, workdir: Path) -> list[dict[str, Any]]:
    upstream, upstream_url = start_http_upstream()
    pooled = start_gateway({"remote": {"url": upstream_url, "lazy": False}}, workdir)
    unpooled = start_gateway({"remote": {"url": upstream_url, "lazy": False, "pool": {"ttl": 1e-6}}}, workdir)
    targets = {
        "direct": (upstream_url, None),
        "gateway, pooled": (f"{pooled[1]}/servers/remote/mcp", pooled[0]),
        "gateway, a session per call": (f"{unpooled[1]}/servers/remote/mcp", unpooled[0]),
    }
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(rounds):
            for concurrency in concurrencies:
                for arm, (url, proc) in targets.items():
                    n = calls if arm != "gateway, a session per call" else max(concurrency * 10, calls // 10)
                    await load([url], concurrency, max(concurrency * 5, n // 10))  # warm up
                    before = cpu_seconds(proc.pid) if proc else 0.0
                    started = time.perf_counter()
                    latencies = sorted(await load([url], concurrency, n))
                    elapsed = time.perf_counter() - started
                    runs.append(
                        {
                            "arm": arm,
                            "concurrency": concurrency,
                            "p50_ms": statistics.median(latencies) * 1000,
                            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
                            "calls_per_s": len(latencies) / elapsed,
                            "gateway_cpu_ms_per_call": (cpu_seconds(proc.pid) - before) * 1000 / len(latencies)
                            if proc
                            else None,
                        }
                    )
    finally:
        for gateway in (pooled[0], unpooled[0]):
            gateway.terminate()
            gateway.wait(30)
        upstream.terminate()
        upstream.wait(30)
    summary = []
    for concurrency in concurrencies:
        direct_p50 = statistics.median(
            r["p50_ms"] for r in runs if r["arm"] == "direct" and r["concurrency"] == concurrency
        )
        for arm in targets:
            group = [r for r in runs if r["arm"] == arm and r["concurrency"] == concurrency]
            cpu = [r["gateway_cpu_ms_per_call"] for r in group if r["gateway_cpu_ms_per_call"] is not None]
            p50 = statistics.median(r["p50_ms"] for r in group)
            summary.append(
                {
                    "arm": arm,
                    "concurrency": concurrency,
                    "p50_ms": p50,
                    "p99_ms": statistics.median(r["p99_ms"] for r in group),
                    "added_p50_ms": p50 - direct_p50,
                    "calls_per_s": statistics.median(r["calls_per_s"] for r in group),
                    "gateway_cpu_ms_per_call": statistics.median(cpu) if cpu else None,
                }
            )
    return summary


async def hit_cost(iterations: int) -> dict[str, float]:
    """acquire + release on a hit, in-process, against a real stdio demo server."""
    from gateway.config import parse_config
    from gateway.events import NullObserver
    from gateway.pool import SessionPool
    from gateway.runtime import build_runtime

    config = parse_config({"servers": {"demo": {"command": PY, "args": ["-m", "gateway.demo_server"]}}})
    observer = NullObserver()
    runtime = build_runtime("demo", config.servers["demo"], observer, lambda *args: None)
    pool = SessionPool(observer)
    pool.add(runtime)
    pooled = await pool.acquire(runtime, "anonymous")  # the miss that starts the server
    pool.release(runtime, pooled, identity="anonymous")
    samples = []
    try:
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(iterations):
                pooled = await pool.acquire(runtime, "anonymous")
                pool.release(runtime, pooled, identity="anonymous")
            samples.append((time.perf_counter() - started) / iterations * 1e6)
    finally:
        await runtime.close()
    return {"acquire_release_us_median": statistics.median(samples), "iterations": iterations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "pool.json"))
    args = parser.parse_args(argv)
    iterations = 20_000
    if args.smoke:
        args.calls, args.concurrency, args.rounds, iterations = 100, "1,4", 1, 500
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="mcp-gateway-bench-"))
    summary = asyncio.run(arms(args.calls, concurrencies, args.rounds, workdir))
    print(f"{'arm':<30} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'calls/s':>8} {'gw CPU ms':>10}")
    for row in summary:
        cpu = row["gateway_cpu_ms_per_call"]
        print(
            f"{row['arm']:<30} {row['concurrency']:>4} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
            f"{row['added_p50_ms']:>8.3f} {row['calls_per_s']:>8.0f} {'' if cpu is None else f'{cpu:.3f}':>10}"
        )
    hit = asyncio.run(hit_cost(iterations))
    print(f"\nacquire + release on a hit: {hit['acquire_release_us_median']:.2f} µs (median of 5 x {iterations})")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "args": vars(args), "summary": summary, "hit": hit}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
