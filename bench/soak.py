"""A long run at about half capacity, to find what only time shows: leaks, lost calls, drift.

A real gateway in front of a stdio demo server, a second stdio server that is SIGKILLed every few
minutes (`victim`), and an SDK-built HTTP server. The official MCP client drives a mix of routes
(`/mcp` tool calls and lists, `/servers/{id}/mcp` on each server) at half the throughput measured
in a short calibration, while `/metrics` is scraped every 15 s. Every call must end with an answer:
a result, or an error that says why (the calls in flight on the victim when it is killed fail with
`reason: crash`). A call with no answer within 30 s is lost.

Reported: calls made, failed and lost (must be 0); the slopes over time (least squares, after the
first minute) of the gateway's RSS, open descriptors, asyncio tasks and series on `/metrics`; and
p99 latency per window, first windows against last. Prints a table, writes JSON
(default `bench/results/soak.json`).

    .venv/bin/python bench/soak.py --minutes 30   # the run docs/benchmarks.md quotes
    .venv/bin/python bench/soak.py --smoke        # seconds; what the test suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import psutil
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.overhead import start_gateway, start_http_upstream  # noqa: E402

PY = sys.executable
CALL_TIMEOUT = 30.0
WORKERS = 8
# (endpoint server or None for /mcp, tool, arguments); lists are asked for on /mcp now and then.
ROUTES: list[tuple[str | None, str, dict[str, Any]]] = [
    (None, "demo__echo", {"text": "soak"}),
    (None, "remote__echo", {"text": "soak"}),
    (None, "victim__echo", {"text": "soak"}),
    ("demo", "add", {"a": 1, "b": 2}),
    ("remote", "echo", {"text": "soak"}),
    ("victim", "echo", {"text": "soak"}),
]


@dataclass
class Tally:
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # by error reason
    lost: int = 0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (time since start, seconds)


@dataclass
class Sample:
    t: float  # seconds since the load began
    rss_mib: float
    fds: int
    tasks: float | None
    series: int
    cpu_s: float  # the gateway's CPU time so far (user + system)
    calls: int  # calls answered so far


def soak_servers(upstream_url: str) -> dict[str, Any]:
    demo = {"command": PY, "args": ["-m", "gateway.demo_server"], "lazy": False}
    return {
        "demo": demo,
        "victim": {**demo, "restart": {"backoff_initial": 0.1, "max_attempts": 1000}},
        "remote": {"url": upstream_url, "lazy": False},
    }


class Load:
    """WORKERS official clients, each with a session per endpoint, calling at a shared pace."""

    def __init__(self, base: str, rate: float | None) -> None:
        self.base = base
        self.rate = rate  # calls/s for all workers together; None: as fast as they can
        self.tally = Tally()
        self.started = time.monotonic()
        self._next = self.started

    async def run(self, seconds: float) -> None:
        self.started = self._next = time.monotonic()
        deadline = self.started + seconds
        await asyncio.gather(*(self._worker(n, deadline) for n in range(WORKERS)))

    async def _worker(self, n: int, deadline: float) -> None:
        rng = random.Random(n)
        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(httpx2.AsyncClient(timeout=httpx2.Timeout(CALL_TIMEOUT)))
            sessions: dict[str | None, ClientSession] = {}
            while time.monotonic() < deadline:
                await self._pace()
                server, tool, arguments = rng.choice(ROUTES)
                listing = server is None and rng.random() < 0.05
                session = sessions.get(server)
                if session is None:
                    session = sessions[server] = await self._open(stack, http, server)
                await self._call(session, tool, arguments, listing)

    async def _open(self, stack: contextlib.AsyncExitStack, http: Any, server: str | None) -> ClientSession:
        url = f"{self.base}/mcp" if server is None else f"{self.base}/servers/{server}/mcp"
        read, write = await stack.enter_async_context(streamable_http_client(url, http_client=http))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return session

    async def _pace(self) -> None:
        if self.rate is None:
            return
        self._next += 1 / self.rate
        delay = self._next - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _call(self, session: ClientSession, tool: str, arguments: dict[str, Any], listing: bool) -> None:
        tally, started = self.tally, time.monotonic()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                if listing:
                    await session.list_tools()
                else:
                    await session.call_tool(tool, arguments)
            tally.ok += 1
        except MCPError as exc:
            reason = (exc.error.data or {}).get("reason", str(exc.error.code)) if exc.error.data is not None else "none"
            tally.failed[str(reason)] = tally.failed.get(str(reason), 0) + 1
        except TimeoutError:
            tally.lost += 1
        tally.latencies.append((started - self.started, time.monotonic() - started))


def _series_and_tasks(base: str) -> tuple[int, float | None]:
    text = httpx.get(base + "/metrics", timeout=30).text
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    tasks = next((float(line.split()[-1]) for line in samples if line.startswith("mcp_gateway_event_loop_tasks")), None)
    return len(samples), tasks


async def _sampler(
    base: str, gateway: psutil.Process, load: Load, every: float, samples: list[Sample], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        series, tasks = await asyncio.to_thread(_series_and_tasks, base)
        memory = gateway.memory_info().rss / 2**20
        cpu = gateway.cpu_times()
        answered = load.tally.ok + sum(load.tally.failed.values())
        t = time.monotonic() - load.started
        samples.append(Sample(t, memory, gateway.num_fds(), tasks, series, cpu.user + cpu.system, answered))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def _killer(base: str, every: float, stop: asyncio.Event, kills: list[float]) -> None:
    while True:
        try:
            await asyncio.wait_for(stop.wait(), every)
            return
        except TimeoutError:
            pass
        servers = (await asyncio.to_thread(httpx.get, base + "/servers", timeout=30)).json()["servers"]
        pid = next(s["pid"] for s in servers if s["id"] == "victim")
        if pid:
            os.kill(pid, signal.SIGKILL)
            kills.append(time.monotonic())


def _slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 3600 if var else None


def _p99_windows(latencies: list[tuple[float, float]], window: float) -> list[tuple[float, float]]:
    buckets: dict[int, list[float]] = {}
    for t, seconds in latencies:
        buckets.setdefault(int(t // window), []).append(seconds)
    return [
        (index * window, statistics.quantiles(values, n=100)[98] * 1000)
        for index, values in sorted(buckets.items())
        if len(values) >= 20
    ]


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    upstream, upstream_url = start_http_upstream()
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    proc, base = start_gateway(soak_servers(upstream_url), workdir)
    try:
        calibration = Load(base, None)
        await calibration.run(args.calibrate)
        capacity = (calibration.tally.ok + sum(calibration.tally.failed.values())) / args.calibrate
        rate = capacity / 2
        print(f"capacity {capacity:.0f} calls/s over {args.calibrate:g} s; soaking at {rate:.0f} calls/s", flush=True)

        load, stop = Load(base, rate), asyncio.Event()
        samples: list[Sample] = []
        kills: list[float] = []
        gateway = psutil.Process(proc.pid)
        background = [
            asyncio.create_task(_sampler(base, gateway, load, args.scrape_every, samples, stop)),
            asyncio.create_task(_killer(base, args.kill_every, stop, kills)),
        ]
        await load.run(args.minutes * 60)
        stop.set()
        await asyncio.gather(*background)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        upstream.terminate()
        upstream.wait(10)
    log = await asyncio.to_thread(_read_logs, workdir)
    return _report(args, capacity, rate, load, samples, kills, log)


def _read_logs(workdir: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in workdir.glob("gateway-*.log"))


def _report(
    args: argparse.Namespace,
    capacity: float,
    rate: float,
    load: Load,
    samples: list[Sample],
    kills: list[float],
    log: str,
) -> dict[str, Any]:
    warm = min(60.0, args.minutes * 60 / 4)  # the first minute: imports, first sessions, caches filling
    steady = [s for s in samples if s.t >= warm]
    second_half = [s for s in samples if s.t >= args.minutes * 30]
    cpu = _cpu_per_call(samples)
    windows = _p99_windows(load.tally.latencies, args.window)
    edge = max(1, len(windows) // 10)
    tally = load.tally
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "minutes": args.minutes,
        "capacity_calls_per_s": round(capacity, 1),
        "rate_calls_per_s": round(rate, 1),
        "calls": tally.ok + sum(tally.failed.values()) + tally.lost,
        "ok": tally.ok,
        "failed": tally.failed,
        "lost": tally.lost,
        "kills": len(kills),
        "tracebacks_in_log": log.count("Traceback"),
        "slopes_per_hour": _slopes(steady, [w for w in windows if w[0] >= warm], [c for c in cpu if c[0] >= warm]),
        "slopes_per_hour_second_half": _slopes(
            second_half,
            [w for w in windows if w[0] >= args.minutes * 30],
            [c for c in cpu if c[0] >= args.minutes * 30],
        ),
        "first_and_last": {
            "rss_mib": [round(samples[0].rss_mib, 1), round(samples[-1].rss_mib, 1)] if samples else None,
            "open_fds": [samples[0].fds, samples[-1].fds] if samples else None,
            "tasks": [samples[0].tasks, samples[-1].tasks] if samples else None,
            "series": [samples[0].series, samples[-1].series] if samples else None,
            "p99_ms": _ends(windows, edge),
            "cpu_ms_per_call": _ends(cpu, max(1, len(cpu) // 10)),
        },
        "samples": [asdict(s) for s in samples],
        "cpu_ms_per_call": cpu,
        "p99_windows_ms": windows,
    }


def _cpu_per_call(samples: list[Sample]) -> list[tuple[float, float]]:
    """The gateway's CPU milliseconds per answered call, between consecutive samples."""
    return [
        (b.t, (b.cpu_s - a.cpu_s) * 1000 / (b.calls - a.calls))
        for a, b in itertools.pairwise(samples)
        if b.calls > a.calls
    ]


def _slopes(
    samples: list[Sample], windows: list[tuple[float, float]], cpu: list[tuple[float, float]]
) -> dict[str, float | None]:
    return {
        "rss_mib": _slope_per_hour([(s.t, s.rss_mib) for s in samples]),
        "open_fds": _slope_per_hour([(s.t, s.fds) for s in samples]),
        "tasks": _slope_per_hour([(s.t, s.tasks) for s in samples if s.tasks is not None]),
        "series": _slope_per_hour([(s.t, s.series) for s in samples]),
        "p99_ms": _slope_per_hour(windows),
        "cpu_ms_per_call": _slope_per_hour(cpu),
    }


def _ends(points: list[tuple[float, float]], edge: int) -> list[float] | None:
    """The median of the first and of the last `edge` points."""
    if not points:
        return None
    return [
        round(statistics.median(p for _, p in points[:edge]), 3),
        round(statistics.median(p for _, p in points[-edge:]), 3),
    ]


def _table(result: dict[str, Any]) -> str:
    first_last, slopes, late = (
        result["first_and_last"],
        result["slopes_per_hour"],
        result["slopes_per_hour_second_half"],
    )

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.2f}"

    lines = [
        f"soak: {result['minutes']:g} min at {result['rate_calls_per_s']:.0f} calls/s "
        f"(capacity {result['capacity_calls_per_s']:.0f}); victim killed {result['kills']} times",
        f"calls {result['calls']}: ok {result['ok']}, failed {result['failed']}, LOST {result['lost']}; "
        f"tracebacks in the gateway's log: {result['tracebacks_in_log']}",
        f"{'':16} {'first':>10} {'last':>10} {'slope/h':>10} {'2nd half':>10}",
    ]
    for key in ("rss_mib", "open_fds", "tasks", "series", "p99_ms", "cpu_ms_per_call"):
        pair = first_last[key] or [None, None]
        lines.append(f"{key:16} {pair[0]!s:>10} {pair[1]!s:>10} {fmt(slopes[key]):>10} {fmt(late[key]):>10}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kill-every", type=float, default=180.0, help="seconds between SIGKILLs of the victim")
    parser.add_argument("--scrape-every", type=float, default=15.0)
    parser.add_argument("--calibrate", type=float, default=20.0, help="seconds of full-speed load to find capacity")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per p99 window")
    parser.add_argument("--smoke", action="store_true", help="a few seconds of everything")
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "soak.json"))
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.kill_every, args.scrape_every, args.calibrate, args.window = 0.25, 5.0, 3.0, 3.0, 3.0
    result = asyncio.run(soak(args))
    print(_table(result))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0 if result["lost"] == 0 and result["tracebacks_in_log"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
