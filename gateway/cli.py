"""The `mcp-gateway` command: `serve`, `check-config` and `metrics-doc`.

Without `--config`, `serve` runs the embedded default: the demo MCP server shipped in this package,
started over stdio like any other server, so one command shows a working gateway. It runs as one
process on uvloop when installed (`--loop`); several worker processes are refused (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.config import Config, ConfigError, load_config, parse_config

log = logging.getLogger("gateway")


def default_config() -> Config:
    return parse_config(
        {
            "servers": {
                "demo": {"command": sys.executable, "args": ["-m", "gateway.demo_server"], "lazy": False},
            }
        }
    )


class _GatewayServer(uvicorn.Server):
    """uvicorn, with the gateway told the moment shutdown begins (readiness 503, GET streams end)."""

    def __init__(self, config: uvicorn.Config, on_exit: object) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if callable(self._on_exit):
            self._on_exit()
        super().handle_exit(sig, frame)


LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop to run on: uvloop when installed ("auto"), or the one named.

    uvloop spends less CPU per forwarded request; stdio children are spawned without its
    subprocess support (gateway/upstream/child.py), which leaks their pipes into them.
    """
    if name != "asyncio":
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise ConfigError("--loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def serve(config: Config, log_level: str, loop: str = "auto") -> int:
    from gateway.app import Gateway, create_app, guard
    from gateway.observability import Telemetry

    try:
        factory = loop_factory(loop)
    except ConfigError as exc:
        print(f"mcp-gateway: {exc}", file=sys.stderr)
        return 2
    telemetry = Telemetry(config) if config.telemetry.enabled else None
    gateway = Gateway(config, telemetry.recorder if telemetry is not None else None)
    app = create_app(gateway, telemetry)
    settings = config.gateway
    uv_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        access_log=False,
        # Whole seconds, rounded up; 0 is no grace at all (None would be uvicorn's "wait forever").
        timeout_graceful_shutdown=math.ceil(settings.limits.drain_timeout),
        server_header=False,
    )
    servers: list[uvicorn.Server] = []
    metrics_port = config.telemetry.metrics_port
    if telemetry is not None and metrics_port is not None:
        metrics_app = guard(Starlette(routes=[Route("/metrics", telemetry.metrics)]), settings, gateway.observer)
        metrics_config = uvicorn.Config(
            metrics_app,
            host=settings.host,
            port=metrics_port,
            log_level=log_level.lower(),
            access_log=False,
            lifespan="off",
        )
        servers.append(_QuietServer(metrics_config))

    def on_exit() -> None:
        gateway.begin_drain()
        for extra in servers:
            extra.should_exit = True

    server = _GatewayServer(uv_config, on_exit)
    if not settings.loopback and not settings.auth.tokens:
        log.warning(
            "serving %s without tokens (gateway.auth.allow_unauthenticated): every client that reaches it may "
            "call every tool and stop servers%s",
            settings.host,
            "" if settings.allowed_hosts else "; gateway.allowed_hosts is unset, so any Host header is accepted",
        )
    base = f"http://{settings.host}:{settings.port}"
    log.info("gateway %r listening: MCP %s/mcp, servers %s/servers", settings.id, base, base)
    for server_id in config.servers:
        log.info("  %s: %s/servers/%s/mcp", server_id, base, server_id)
    if telemetry is not None:
        where = f"http://{settings.host}:{metrics_port}" if metrics_port is not None else base
        log.info("metrics: %s/metrics", where)

    async def run_all() -> None:
        log.info("event loop: %s", type(asyncio.get_running_loop()).__module__.partition(".")[0])
        await asyncio.gather(server.serve(), *(extra.serve() for extra in servers))

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run_all())
    return 0


class _QuietServer(uvicorn.Server):
    """A second listener (the metrics port) that leaves signal handling to the main server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


WORKERS_REFUSED = (
    "--workers {n}: mcp-gateway runs as one process per replica. Worker processes would each hold their "
    "own MCP sessions, upstream servers and counters, and every scrape of /metrics would show one worker's "
    "share, picked by the kernel. Run {n} replicas instead, each scraped (or pushing OTLP) on its own: "
    "see docs/scaling.md."
)


def _single_process(workers: int, web_concurrency: str | None) -> str | None:
    """Why the gateway refuses to start with several worker processes, or None when it runs as one.

    uvicorn's own CLI takes its worker count from WEB_CONCURRENCY, which some platforms set for every
    app; the gateway never forks workers, so there it only says that the variable has no effect.
    """
    if workers < 1:
        return f"--workers {workers}: must be 1"
    if workers > 1:
        return WORKERS_REFUSED.format(n=workers)
    if web_concurrency not in (None, "", "1"):
        log.warning(
            "WEB_CONCURRENCY=%s is ignored: mcp-gateway runs one process per replica (see docs/scaling.md)",
            web_concurrency,
        )
    return None


def metrics_doc(path: str, check: bool) -> int:
    from telemetry.docs import generate

    text = generate()
    target = Path(path)
    if check:
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            print(f"{path} is out of date: run `mcp-gateway metrics-doc`", file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcp-gateway", description="A gateway for MCP servers.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument("--config", help="YAML or JSON config file (default: the embedded demo)")
    serve_cmd.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port (default from config: 8080)")
    serve_cmd.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve_cmd.add_argument("--loop", default="auto", choices=LOOPS, help="event loop (auto: uvloop when installed)")
    serve_cmd.add_argument(
        "--workers", type=int, default=1, help="must be 1: scale out with replicas instead (docs/scaling.md)"
    )
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    doc = commands.add_parser("metrics-doc", help="write the metric reference generated from the catalog")
    doc.add_argument("--output", default="docs/metrics.md")
    doc.add_argument("--check", action="store_true", help="exit non-zero if the file is out of date")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "metrics-doc":
        return metrics_doc(args.output, args.check)
    try:
        if args.command == "check-config":
            config = load_config(args.file)
            if (refusal := config.gateway.unauthenticated_refusal()) is not None:
                print(f"mcp-gateway: {args.file}: {refusal}", file=sys.stderr)
                return 2
            print(f"{args.file}: OK ({len(config.servers)} servers: {', '.join(config.servers) or 'none'})")
            return 0
        config = load_config(args.config) if args.config else default_config()
    except ConfigError as exc:
        print(f"mcp-gateway: invalid config: {exc}", file=sys.stderr)
        return 2
    refusal = _single_process(args.workers, os.environ.get("WEB_CONCURRENCY"))
    if refusal is not None:
        print(f"mcp-gateway: {refusal}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        config = config.model_copy(update={"gateway": config.gateway.model_copy(update=overrides)})
    refusal = config.gateway.unauthenticated_refusal()
    if refusal is not None:
        print(f"mcp-gateway: refusing to start: {refusal}", file=sys.stderr)
        return 2
    return serve(config, args.log_level, args.loop)


if __name__ == "__main__":
    sys.exit(main())
