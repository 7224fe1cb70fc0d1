"""A remote MCP server over streamable HTTP, as the gateway's client session with it.

Each request is one POST; the reply is JSON or an SSE stream whose events (progress, server
requests, logs) belong to that request, which is exactly how `base.UpstreamSession` routes them.
A GET stream, when the server offers one, carries the rest. `close` ends the session with DELETE.

The client is aiohttp rather than httpx: measured on the forwarding path (bench/overhead.py), a
POST round trip costs ~0.2 ms of CPU with aiohttp against ~0.8 ms with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.config import HttpServer
from gateway.errors import GatewayError, SessionExpired, UpstreamClosed, UpstreamUnavailable
from gateway.protocol import Message, dumps
from gateway.upstream.base import Pending, UpstreamHandler, UpstreamSession

log = logging.getLogger(__name__)

_ACCEPT = "application/json, text/event-stream"


HttpClient = aiohttp.ClientSession
HttpError = aiohttp.ClientError


# Idle connections are closed before the server would close them: a POST sent on a connection the
# server is closing at that moment fails, and cannot safely be sent again. 4 s is under the 5 s of
# uvicorn and Node.js, the usual hosts of MCP servers.
KEEPALIVE_SECONDS = 4.0


def make_client() -> HttpClient:
    """One connection pool per upstream server, shared by its sessions."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_connect=10.0),
        connector=aiohttp.TCPConnector(limit=256, limit_per_host=256, keepalive_timeout=KEEPALIVE_SECONDS),
        auto_decompress=True,
    )


async def iter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The `data` of each server-sent event, joined across lines per the SSE spec."""
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


class HttpSession(UpstreamSession):
    transport = "streamable-http"

    def __init__(
        self, server_id: str, config: HttpServer, client: HttpClient, handler: UpstreamHandler | None = None
    ) -> None:
        super().__init__(server_id, handler)
        self.config = config
        self._client = client
        self.session_id: str | None = None
        self._headers: dict[str, str] = {**config.headers, "Accept": _ACCEPT, "Content-Type": "application/json"}
        self._listener: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> None:
        try:
            await self.initialize(timeout)
        except UpstreamClosed as exc:
            raise UpstreamUnavailable(exc.message, data=exc.data) from None
        self._headers["MCP-Protocol-Version"] = self.protocol_version
        self._listener = asyncio.create_task(self._listen(), name=f"{self.server_id}-get-stream")

    def _failure(self, what: str, reason: str = "transport") -> UpstreamClosed:
        return UpstreamClosed(f"server {self.server_id!r}: {what}", data={"server": self.server_id, "reason": reason})

    async def _send(self, message: Message, pending: Pending | None) -> None:
        try:
            async with self._client.post(self.config.url, data=dumps(message), headers=self._headers) as response:
                await self._read_reply(message, response, pending)
        except HttpError as exc:
            raise self._failure(f"HTTP exchange failed: {exc!r}") from None

    async def _read_reply(self, message: Message, response: aiohttp.ClientResponse, pending: Pending | None) -> None:
        status = response.status
        if status == 404 and self.session_id is not None:
            # Each request in flight on this session gets its own 404, and with it a SessionExpired.
            self._mark_closed("upstream_closed", "the server no longer knows this session (HTTP 404)")
            raise SessionExpired(
                f"server {self.server_id!r}: session expired upstream (HTTP 404)",
                data={"server": self.server_id, "reason": "upstream_closed"},
            )
        if status == 202 or pending is None and status < 300:
            return
        content_type = response.headers.get("content-type", "")
        if status >= 400:
            body = await response.read()
            if content_type.startswith("application/json") and pending is not None:
                with contextlib.suppress(orjson.JSONDecodeError):
                    reply = orjson.loads(body)
                    if isinstance(reply, dict) and "error" in reply:
                        reply["id"] = message.get("id")
                        self._dispatch(reply, pending)
                        return
            raise self._failure(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        if message.get("method") == "initialize":
            self.session_id = response.headers.get("mcp-session-id")
            if self.session_id:
                self._headers["Mcp-Session-Id"] = self.session_id
        if content_type.startswith("text/event-stream"):
            async for data in iter_sse(response):
                self._dispatch_data(data.encode(), pending)
                if pending is not None and pending.future.done():
                    return
        else:
            self._dispatch_data(await response.read(), pending)

    def _dispatch_data(self, data: bytes, pending: Pending | None) -> None:
        if not data.strip():
            return
        try:
            parsed: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("server %s sent a reply that is not JSON; skipped: %.200r", self.server_id, data)
            return
        for item in parsed if isinstance(parsed, list) else [parsed]:
            self._dispatch(item, pending)

    async def _listen(self) -> None:
        """The optional GET stream: server-initiated messages not tied to a request."""
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        headers["Accept"] = "text/event-stream"
        failures = 0
        while not self.closed and failures < 5:
            try:
                async with self._client.get(self.config.url, headers=headers) as response:
                    if response.status == 405:
                        return  # the server offers no GET stream
                    if response.status != 200:
                        failures += 1
                    else:
                        failures = 0
                        async for data in iter_sse(response):
                            self._dispatch_data(data.encode(), None)
            except HttpError as exc:
                failures += 1
                log.debug("GET stream of %s broke: %r", self.server_id, exc)
            await asyncio.sleep(min(2.0**failures, 30.0))

    async def _close_transport(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        if self.session_id is None:
            return
        with contextlib.suppress(HttpError, GatewayError, TimeoutError):
            async with self._client.delete(
                self.config.url, headers=self._headers, timeout=aiohttp.ClientTimeout(total=5.0)
            ):
                pass
