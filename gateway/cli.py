"""The `mcp-gateway` command: `serve` and `check-config`.

Without `--config`, `serve` runs the embedded default: the demo MCP server shipped in this package,
started over stdio like any other server, so one command shows a working gateway.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from types import FrameType

import uvicorn

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


class _Server(uvicorn.Server):
    """uvicorn, with the gateway told the moment shutdown begins (readiness 503, GET streams end)."""

    def __init__(self, config: uvicorn.Config, on_exit: object) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if callable(self._on_exit):
            self._on_exit()
        super().handle_exit(sig, frame)


def serve(config: Config, log_level: str) -> int:
    from gateway.app import Gateway, create_app

    gateway = Gateway(config)
    app = create_app(gateway)
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
    server = _Server(uv_config, gateway.begin_drain)
    base = f"http://{settings.host}:{settings.port}"
    log.info("gateway %r listening: MCP %s/mcp, servers %s/servers", settings.id, base, base)
    for server_id in config.servers:
        log.info("  %s: %s/servers/%s/mcp", server_id, base, server_id)
    server.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcp-gateway", description="A gateway for MCP servers.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument("--config", help="YAML or JSON config file (default: the embedded demo)")
    serve_cmd.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port (default from config: 8080)")
    serve_cmd.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "check-config":
            config = load_config(args.file)
            print(f"{args.file}: OK ({len(config.servers)} servers: {', '.join(config.servers) or 'none'})")
            return 0
        config = load_config(args.config) if args.config else default_config()
    except ConfigError as exc:
        print(f"mcp-gateway: invalid config: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        config = config.model_copy(update={"gateway": config.gateway.model_copy(update=overrides)})
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    return serve(config, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
