"""What the HTTP test servers share: a uvicorn server that says when it listens, for tests to wait on."""

from __future__ import annotations

from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class ReadyServer(uvicorn.Server):
    """A uvicorn server that prints ``READY <port>`` (flushed) once its sockets are listening."""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"READY {port}", flush=True)


def add_healthz(server: MCPServer) -> None:
    """`GET /healthz`: 200 and the server's name, a second readiness check beside the READY line."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "server": server.name})

    server.custom_route("/healthz", methods=["GET"])(healthz)
