"""What telemetry costs the gateway: per request, per scrape, and to requests while scraping.

In one run, side by side:
1. Per-request cost: the same load through a real gateway with telemetry off, on (Prometheus and
   OTLP readers, pushing every second to a local sink), and on plus the ASGI HTTP metrics; the
   gateway's throughput and CPU per call.
2. Scrape cost: rendering `/metrics` for a synthetic fleet of 100 servers x 50 tools with every
   family populated (semantic-convention histograms included), with this project's reader and
   with the stock `PrometheusMetricReader`; page size plain and gzipped.
3. Request p99 with a scraper hitting `/metrics` every second vs. without, on a gateway fronting
   100 server ids.

    .venv/bin/python bench/telemetry.py            # full run
    .venv/bin/python bench/telemetry.py --smoke    # seconds; what the test suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import PY, REPO, cpu_seconds, machine, start_gateway, start_http_upstream

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def start_sink() -> tuple[ThreadingHTTPServer, int]:
    """An OTLP/HTTP endpoint on loopback that accepts every export."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


async def open_session(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"},
        },
    }
    async with http.post(url, json=init, headers=HEADERS) as response:
        session = response.headers["mcp-session-id"]
    headers = {**HEADERS, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    async with http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers):
        pass
    return headers


async def load(urls: list[str], concurrency: int, calls: int) -> list[float]:
    """`concurrency` raw JSON-RPC clients calling echo; per-call latencies in seconds."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:
        sessions = [(url, await open_session(http, url)) for url in (urls * concurrency)[:concurrency]]

        async def worker(url: str, headers: dict[str, str]) -> None:
            for n in range(calls // concurrency):
                body = {
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "x"}},
                }
                started = time.perf_counter()
                async with http.post(url, json=body, headers=headers) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker(url, headers) for url, headers in sessions))
    return latencies


@dataclass
class CostRow:
    arm: str
    calls_per_s: float
    cpu_ms_per_call: float
    p50_ms: float


async def per_request_cost(calls: int, rounds: int, workdir: Path) -> list[dict[str, Any]]:
    sink, sink_port = start_sink()
    demo = {"command": PY, "args": ["-m", "gateway.demo_server"], "lazy": False}
    otlp_env = {
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{sink_port}/v1/metrics",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }
    arms = {
        "telemetry off": ({"enabled": False}, {}),
        "telemetry on (Prometheus + OTLP)": ({"enabled": True}, otlp_env),
        "on + HTTP server metrics": ({"enabled": True, "http_metrics": True}, otlp_env),
    }
    gateways = {
        arm: start_gateway({"demo": demo}, workdir, sections={"telemetry": telemetry}, env=env)
        for arm, (telemetry, env) in arms.items()
    }
    rows: list[CostRow] = []
    try:
        for _ in range(rounds):
            for arm, (proc, base) in gateways.items():
                url = f"{base}/servers/demo/mcp"
                await load([url], 8, max(80, calls // 10))  # warm up
                before = cpu_seconds(proc.pid)
                started = time.perf_counter()
                latencies = await load([url], 8, calls)
                elapsed = time.perf_counter() - started
                cpu = cpu_seconds(proc.pid) - before
                rows.append(
                    CostRow(
                        arm, len(latencies) / elapsed, cpu * 1000 / len(latencies), statistics.median(latencies) * 1000
                    )
                )
    finally:
        for proc, _ in gateways.values():
            proc.terminate()
            proc.wait(30)
        sink.shutdown()
    summary = []
    off = [r for r in rows if r.arm == "telemetry off"]
    for arm in arms:
        group = [r for r in rows if r.arm == arm]
        summary.append(
            {
                "arm": arm,
                "calls_per_s": statistics.median(r.calls_per_s for r in group),
                "cpu_ms_per_call": statistics.median(r.cpu_ms_per_call for r in group),
                "p50_ms": statistics.median(r.p50_ms for r in group),
                # per round, against the "off" run of the same round: robust to drift on a shared machine
                "throughput_vs_off": statistics.median(
                    r.calls_per_s / o.calls_per_s for r, o in zip(group, off, strict=True)
                ),
            }
        )
    return summary


def scrape_cost(servers: int, tools: int, repeats: int) -> dict[str, Any]:
    """Render time of a fully populated fleet's page: this project's reader vs. the stock exporter."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.events import RequestRecord
    from telemetry.exposition import render
    from telemetry.provider import build_pipeline
    from telemetry.recorder import PoolSample, Recorder, ServerSample
    from telemetry.settings import TelemetrySettings

    class Fleet:
        def server_samples(self) -> list[ServerSample]:
            return [ServerSample(f"server-{i}", True, None, 100.0, 0) for i in range(servers)]

        def pool_samples(self) -> list[PoolSample]:
            return [PoolSample(f"server-{i}", 0, 1) for i in range(servers)]

        def tasks(self) -> int | None:
            return 10

    def populate(recorder: Recorder) -> None:
        methods = ["initialize", "tools/list", "prompts/get", "resources/read", "ping"]
        for i in range(servers):
            sid = f"server-{i}"
            names = [f"{sid}-tool-{j}" for j in range(tools)]
            recorder.tools_listed(sid, names, True)
            recorder.server_started(sid, 0.4)
            recorder.server_stopped(sid, "idle")
            for event in ("hit", "miss", "health_check_failed"):
                recorder.pool_event(sid, event)
            recorder.pool_event(sid, "evicted", "idle")
            for name in names:
                recorder.request_finished(
                    RequestRecord(
                        server_id=sid,
                        method="tools/call",
                        target=name,
                        duration=0.02,
                        error_type=None,
                        upstream_duration=0.019,
                        protocol_version="2025-11-25",
                        upstream_transport="stdio",
                    )
                )
            for method in methods:
                target = "greet" if method == "prompts/get" else None
                recorder.request_finished(
                    RequestRecord(
                        server_id=sid,
                        method=method,
                        target=target,
                        duration=0.01,
                        error_type="timeout",
                        upstream_duration=0.01,
                        protocol_version="2025-11-25",
                        upstream_transport="stdio",
                    )
                )
            recorder.session_closed("server", 30.0, "2025-11-25", None)
            recorder.session_closed("client", 60.0, "2025-11-25", "stdio")

    def timed(render_once: Any) -> tuple[float, bytes]:
        gc.collect()
        times, body = [], b""
        for _ in range(repeats):
            started = time.perf_counter()
            body = render_once()
            times.append(time.perf_counter() - started)
        return statistics.median(times), body

    # One pipeline at a time, so neither pays for the other's objects in garbage collection.
    settings = TelemetrySettings(gateway_id="bench", cardinality_limit=1_000_000)
    ours = build_pipeline(settings)
    populate(recorder := Recorder(ours.provider.get_meter("mcp-gateway"), settings))
    recorder.watch(Fleet())
    ours_s, page = timed(lambda: render(ours.prometheus)[0])
    ours_gzip_s, zipped = timed(lambda: render(ours.prometheus, gzipped=True)[0])
    resource = ours.resource
    ours.shutdown()

    registry = CollectorRegistry(auto_describe=False)
    stock_reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    stock_provider = MeterProvider(metric_readers=[stock_reader], resource=resource)
    populate(stock := Recorder(stock_provider.get_meter("mcp-gateway"), settings))
    stock.watch(Fleet())
    stock_s, stock_page = timed(lambda: generate_latest(registry))
    stock_provider.shutdown()
    histogram_series = page.count(b"_count{")
    return {
        "servers": servers,
        "tools_per_server": tools,
        "series": sum(1 for line in page.splitlines() if line and not line.startswith(b"#")),
        "histogram_series": histogram_series,
        "page_bytes": len(page),
        "page_gzip_bytes": len(zipped),
        "render_ms": ours_s * 1000,
        "render_gzip_ms": ours_gzip_s * 1000,
        "stock_exporter_render_ms": stock_s * 1000,
        "stock_page_bytes": len(stock_page),
        "stock_vs_ours": stock_s / ours_s,
    }


async def scrape_interference(calls: int, rounds: int, servers: int, workdir: Path) -> dict[str, Any]:
    upstream, upstream_url = start_http_upstream()
    config = {f"remote-{i}": {"url": upstream_url} for i in range(servers)}
    proc, base = start_gateway(config, workdir, sections={"telemetry": {"enabled": True}})
    urls = [f"{base}/servers/remote-{i}/mcp" for i in range(servers)]
    await load(urls, servers, servers * 3)  # connect every server, populate every series
    page_bytes = 0
    results: dict[str, list[float]] = {"no scraping": [], "scraping every 1 s": []}

    async def scrape_every_second(stop: asyncio.Event) -> None:
        nonlocal page_bytes
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                async with http.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"}) as response:
                    page_bytes = len(await response.read())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    try:
        for _ in range(rounds):
            for arm in results:
                stop = asyncio.Event()
                task = asyncio.create_task(scrape_every_second(stop)) if arm != "no scraping" else None
                latencies = sorted(await load(urls[:8], 8, calls))
                stop.set()
                if task is not None:
                    await task
                results[arm].append(latencies[int(len(latencies) * 0.99)] * 1000)
    finally:
        proc.terminate()
        proc.wait(30)
        upstream.terminate()
        upstream.wait(30)
    quiet = statistics.median(results["no scraping"])
    busy = statistics.median(results["scraping every 1 s"])
    return {
        "servers": servers,
        "p99_ms_no_scrape": quiet,
        "p99_ms_scraping": busy,
        "ratio": busy / quiet,
        "scraped_page_gzip_bytes": page_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "telemetry.json"))
    args = parser.parse_args(argv)
    servers, tools, repeats, fleet = 100, 50, 5, 100
    if args.smoke:
        args.calls, args.rounds, servers, tools, repeats, fleet = 200, 1, 5, 5, 3, 4
    workdir = Path(tempfile.mkdtemp(prefix="mcp-gateway-bench-"))

    cost = asyncio.run(per_request_cost(args.calls, args.rounds, workdir))
    print(
        f"{'per-request cost (stdio demo, 8 sessions)':<42} {'calls/s':>8} {'vs off':>7}"
        f" {'CPU ms/call':>12} {'p50 ms':>7}"
    )
    for row in cost:
        print(
            f"{row['arm']:<42} {row['calls_per_s']:>8.0f} {row['throughput_vs_off']:>7.3f} "
            f"{row['cpu_ms_per_call']:>12.3f} {row['p50_ms']:>7.3f}"
        )

    scrape = scrape_cost(servers, tools, repeats)
    print(
        f"\nscrape of {servers} servers x {tools} tools: {scrape['series']} series "
        f"({scrape['histogram_series']} histograms), page {scrape['page_bytes'] / 1e6:.1f} MB "
        f"({scrape['page_gzip_bytes'] / 1e6:.2f} MB gzipped)"
    )
    print(
        f"  render: {scrape['render_ms']:.0f} ms ({scrape['render_gzip_ms']:.0f} ms with gzip); "
        f"stock exporter: {scrape['stock_exporter_render_ms']:.0f} ms ({scrape['stock_vs_ours']:.1f}x)"
    )

    interference = asyncio.run(scrape_interference(args.calls, args.rounds, fleet, workdir))
    print(
        f"\nrequest p99 with {fleet} servers: {interference['p99_ms_no_scrape']:.2f} ms without scraping, "
        f"{interference['p99_ms_scraping']:.2f} ms scraping every second ({interference['ratio']:.2f}x); "
        f"page {interference['scraped_page_gzip_bytes'] / 1e3:.0f} kB gzipped"
    )

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "args": vars(args),
                "per_request": cost,
                "scrape": scrape,
                "scrape_interference": interference,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
