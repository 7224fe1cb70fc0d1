"""Embedded demo MCP server shipped with mcp-gateway.

Run over stdio with ``python -m gateway.demo_server``; the gateway can register it as an
upstream to try the gateway out without any external server. It exposes a handful of
tools (echo, add, sleep, fail, progress), one prompt, one static resource and one template.
"""

from __future__ import annotations

from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import Completion

SERVER_NAME = "mcp-gateway-demo"
GREETABLE = ("Ada", "Alan", "Grace", "Guido")
MAX_SLEEP_SECONDS = 60.0
MAX_PROGRESS_STEPS = 100

README_TEXT = """\
mcp-gateway demo server

Tools: echo(text), add(a, b), sleep(seconds), fail(message), progress(steps).
Prompt: greet(name). Resources: demo://readme, demo://echo/{text}.
"""


def create_server() -> MCPServer:
    """Build a fresh demo server instance with all tools, prompts and resources registered."""
    server: MCPServer = MCPServer(
        SERVER_NAME,
        version="1.0.0",
        instructions="Demo server bundled with mcp-gateway; safe to call, has no side effects.",
        log_level="WARNING",
    )

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
    def fail(message: str = "demo failure") -> str:
        raise ToolError(message)

    @server.tool(description="Emit one progress notification per step, then return.")
    async def progress(steps: int, ctx: Context) -> str:
        total = min(max(steps, 0), MAX_PROGRESS_STEPS)
        for step in range(1, total + 1):
            await ctx.report_progress(step, total, f"step {step}/{total}")
            await anyio.sleep(0.01)
        return f"completed {total} steps"

    @server.prompt(description="Greet someone by name.")
    def greet(name: str) -> str:
        return f"Please write a short, friendly greeting for {name}."

    @server.completion()  # type: ignore[no-untyped-call,untyped-decorator]  # untyped in mcp 2.3
    async def complete(ref: Any, argument: Any, context: Any) -> Completion | None:
        if getattr(ref, "name", None) == "greet" and argument.name == "name":
            return Completion(values=[name for name in GREETABLE if name.startswith(argument.value)])
        return None

    @server.resource("demo://readme", name="readme", description="About the demo server.", mime_type="text/plain")
    def readme() -> str:
        return README_TEXT

    @server.resource("demo://echo/{text}", name="echo", description="Echo the URI segment.", mime_type="text/plain")
    def echo_resource(text: str) -> str:
        return text

    return server


def main() -> None:
    """Serve the demo server over stdio until stdin closes."""
    create_server().run("stdio")


if __name__ == "__main__":
    main()
