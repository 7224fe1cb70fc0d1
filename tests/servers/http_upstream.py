"""SDK-built MCP server over streamable HTTP, used as an upstream in gateway tests.

Run: ``python -m tests.servers.http_upstream --port P [--host 127.0.0.1] [--stateless] [--json-response]``.
Once listening it prints ``READY <port>`` on stdout (flushed); ``--port 0`` picks a free port and
reports it in that line. ``GET /healthz`` answers 200 as a second readiness check. MCP lives at ``/mcp``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Annotated, Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from tests.servers.ready import ReadyServer, add_healthz

MAX_SLEEP_SECONDS = 60.0
SESSION_HEADER = "mcp-session-id"


def create_server(name: str = "http-upstream") -> MCPServer:
    """Build the upstream server; `name` is reported as serverInfo.name so tests can tell upstreams apart."""
    server: MCPServer = MCPServer(name, version="1.0.0", log_level="WARNING")
    # Calls to `whoami` per upstream MCP session id (None = requests without a session, i.e. stateless).
    calls: Counter[str | None] = Counter()

    @server.tool(description="Return the given text unchanged.")
    def echo(text: str) -> str:
        return text

    @server.tool(description="Return the sum of two numbers.")
    def add(a: int | float, b: int | float) -> int | float:
        return a + b

    @server.tool(description=f"Sleep for the given number of seconds (capped at {MAX_SLEEP_SECONDS:g}).")
    async def sleep(seconds: float) -> str:
        duration = min(max(seconds, 0.0), MAX_SLEEP_SECONDS)
        await anyio.sleep(duration)
        return f"slept {duration:g}s"

    @server.tool(description="Always fail with the given message (returns an isError result).")
    def fail(message: str = "upstream failure") -> str:
        raise ToolError(message)

    @server.tool(description="Emit one progress notification per step, then return.")
    async def progress(steps: int, ctx: Context) -> str:
        total = min(max(steps, 0), 100)
        for step in range(1, total + 1):
            await ctx.report_progress(step, total, f"step {step}/{total}")
            await anyio.sleep(0.01)
        return f"completed {total} steps"

    @server.tool(description="Describe the caller: upstream MCP session id, per-session call count, request headers.")
    def whoami(ctx: Context) -> dict[str, Any]:
        headers = dict(ctx.headers or {})
        session_id = headers.get(SESSION_HEADER)
        calls[session_id] += 1
        return {
            "server": server.name,
            "session_id": session_id,
            "calls": calls[session_id],
            "protocol_version": ctx.protocol_version,
            "headers": headers,
        }

    _add_2026_tools(server)

    @server.prompt(description="Ask for a one-paragraph summary of a topic.")
    def summarize(topic: str) -> str:
        return f"Summarize {topic} in one paragraph."

    @server.resource("upstream://info", name="info", description="About this upstream.", mime_type="text/plain")
    def info() -> str:
        return f"{server.name}: test upstream for mcp-gateway"

    add_healthz(server)

    return server


def _add_2026_tools(server: MCPServer) -> None:
    """Tools for what MCP 2026-07-28 changed: a tool argument mirrored in a header, and log lines opted into."""

    @server.tool(description="Answer with the region, which clients of MCP 2026-07-28 mirror in Mcp-Param-Region.")
    def route(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})], query: str) -> str:
        return f"{query} in {region}"

    @server.tool(description="Log one line at each of debug, info and warning, then return.")
    async def chatty(ctx: Context) -> str:
        await ctx.debug("a debug line")
        await ctx.info("an info line")
        await ctx.warning("a warning line")
        return "logged"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port (see the READY line)")
    parser.add_argument("--stateless", action="store_true", help="no Mcp-Session-Id; fresh transport per request")
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with JSON instead of SSE")
    parser.add_argument("--name", default="http-upstream", help="serverInfo.name reported to clients")
    args = parser.parse_args(argv)

    app = create_server(args.name).streamable_http_app(
        stateless_http=args.stateless, json_response=args.json_response, host=args.host
    )
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    ReadyServer(config).run()
    sys.exit(0)


if __name__ == "__main__":
    main()
