"""A remote MCP server over streamable HTTP, as the gateway's client session with it.

Each request is one POST; the reply is JSON or an SSE stream whose events (progress, server
requests, logs) belong to that request, which is exactly how `base.UpstreamSession` routes them.
A GET stream, when the server offers one, carries the rest. `close` ends the session with DELETE.

What the server sends is bounded (`limits.max_upstream_message_bytes` per message, read in chunks,
never by aiohttp's line reader). Redirects are followed only within the configured URL's origin:
the request carries the server's configured headers, credentials among them, which must not reach
another host. Failures are described in the gateway's own words: aiohttp's exception reprs carry
the request's headers, so they are never shown, logged or kept.

The client is aiohttp rather than httpx: measured on the forwarding path (bench/overhead.py), a
POST round trip costs ~0.2 ms of CPU with aiohttp against ~0.8 ms with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from gateway.config import HttpServer
from gateway.errors import GatewayError, SessionExpired, UpstreamClosed, UpstreamInvalid, UpstreamUnavailable
from gateway.protocol import Message, dumps
from gateway.upstream import era
from gateway.upstream.base import DEFAULT_MAX_MESSAGE, Pending, UpstreamHandler, UpstreamSession
from gateway.upstream.framing import Frame, Oversized, sse_data

log = logging.getLogger(__name__)

_ACCEPT = "application/json, text/event-stream"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_ERROR_BODY = 64 * 1024  # bytes of an HTTP error reply read for its JSON-RPC error
_SHOWN = 200  # characters of an error reply quoted in the gateway's message

HttpClient = aiohttp.ClientSession
# What an exchange can fail with, besides the gateway's own errors: aiohttp's client errors and
# its parser's (a malformed status line or header from the server is not a ClientError).
TRANSPORT_ERRORS = (aiohttp.ClientError, HttpProcessingError, OSError)


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


def describe_failure(exc: BaseException) -> str:
    """What went wrong in an exchange, without the request's headers or URL (they may hold secrets)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port} ({reason})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the reply was cut off or malformed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, HttpProcessingError):
        return "the server's HTTP reply was malformed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


async def _ignore(response: aiohttp.ClientResponse) -> None:
    """A reply with nothing in it for the gateway (a DELETE's)."""


class HttpSession(UpstreamSession):
    transport = "streamable-http"
    sends_headers = True
    cancels_by_closing = True

    def __init__(
        self,
        server_id: str,
        config: HttpServer,
        client: HttpClient,
        handler: UpstreamHandler | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        super().__init__(server_id, handler, max_message_bytes)
        self.config = config
        self._client = client
        self._url = URL(config.url)  # moved by a redirect within its origin
        self.session_id: str | None = None
        self._headers: dict[str, str] = {**config.headers, "Accept": _ACCEPT, "Content-Type": "application/json"}
        self._secrets = [value for value in config.headers.values() if len(value) >= 4]
        self._listener: asyncio.Task[None] | None = None

    async def start(self, timeout: float, discovered: dict[str, Any] | None = None) -> None:
        """Connected: a 2026 server needs nothing more; a 2025 session opens its GET stream."""
        try:
            await era.connect(self, timeout, self.config.protocol, discovered)
        except UpstreamClosed as exc:
            raise UpstreamUnavailable(exc.message, data=exc.data) from None
        self._headers["MCP-Protocol-Version"] = self.protocol_version
        if not self.modern:
            self._listener = asyncio.create_task(self._listen(), name=f"{self.server_id}-get-stream")
            self._listener.add_done_callback(self._task_done)

    def _negotiated(self) -> None:
        self._headers["MCP-Protocol-Version"] = self.protocol_version  # notifications/initialized carries it too

    def _failure(self, what: str, reason: str = "transport") -> UpstreamClosed:
        for secret in self._secrets:  # belt and braces: an upstream may echo a header back in its error text
            what = what.replace(secret, "***")
        return UpstreamClosed(f"server {self.server_id!r}: {what}", data={"server": self.server_id, "reason": reason})

    async def _exchange(
        self,
        method: str,
        headers: dict[str, str],
        read: Callable[[aiohttp.ClientResponse], Awaitable[None]],
        body: bytes | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        """One HTTP exchange with the server, redirects followed within its origin only; `read` takes
        the final response (released after: back to the pool if read whole, else closed)."""
        timeout = timeout or self._client.timeout
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self._client.request(
                    method, self._url, data=body, headers=headers, allow_redirects=False, timeout=timeout
                ) as response:
                    status = response.status
                    if status not in _REDIRECTS or "location" not in response.headers:
                        await read(response)
                        return
                    location = response.headers["location"]
            except TRANSPORT_ERRORS as exc:
                log.debug("server %s: %s %s", self.server_id, method, describe_failure(exc))
                raise self._failure(f"HTTP exchange failed: {describe_failure(exc)}") from None
            self._url = self._redirect(status, location)
        raise self._failure(f"more than {MAX_REDIRECTS} redirects from the configured URL")

    def _redirect(self, status: int, location: str) -> URL:
        try:
            target = self._url.join(URL(location))
        except ValueError:
            raise self._failure(f"HTTP {status} redirect to an invalid location") from None
        if target.origin() != self._url.origin():
            raise self._failure(
                f"HTTP {status} redirect to another origin ({target.origin()}) not followed: the request "
                "carries this server's configured headers; configure the server's final URL instead",
                reason="redirect",
            )
        log.info("server %s: HTTP %d redirect to %s (same origin); configure that URL", self.server_id, status, target)
        return target

    async def _send(self, message: Message, pending: Pending | None) -> None:
        async def read(response: aiohttp.ClientResponse) -> None:
            await self._read_reply(message, response, pending)

        headers = self._headers if pending is None or pending.headers is None else {**self._headers, **pending.headers}
        await self._exchange("POST", headers, read, dumps(message))

    async def _read_reply(self, message: Message, response: aiohttp.ClientResponse, pending: Pending | None) -> None:
        status = response.status
        if status == 404 and self.session_id is not None:
            # Each request in flight on this session gets its own 404, and with it a SessionExpired.
            self._mark_closed("upstream_closed", "the server no longer knows this session (HTTP 404)")
            raise SessionExpired(
                f"server {self.server_id!r}: session expired upstream (HTTP 404)",
                data={"server": self.server_id, "reason": "upstream_closed"},
            )
        if status == 202 or (pending is None and status < 300):
            return
        content_type = response.headers.get("content-type", "")
        if status >= 400:
            body = await response.content.read(_ERROR_BODY)
            if content_type.startswith("application/json") and pending is not None:
                with contextlib.suppress(orjson.JSONDecodeError):
                    reply = orjson.loads(body)
                    if isinstance(reply, dict) and "error" in reply:
                        reply["id"] = message.get("id")
                        self._dispatch(reply, pending)
                        return
            raise self._failure(f"HTTP {status}: {body[:_SHOWN].decode('utf-8', 'replace')}")
        if message.get("method") == "initialize":
            self.session_id = response.headers.get("mcp-session-id")
            if self.session_id:
                self._headers["Mcp-Session-Id"] = self.session_id
        if content_type.startswith("text/event-stream"):
            async for data in sse_data(response.content.iter_any(), self.max_message_bytes):
                self._receive(data, pending)
                if pending is not None and pending.future.done():
                    return
        else:
            self._receive(await self._read_body(response), pending)
        if pending is not None and not pending.future.done():
            # The reply is over and did not answer: nothing else will (the gateway does not resume streams).
            pending.future.set_exception(
                UpstreamInvalid(
                    f"server {self.server_id!r} ended its reply to {pending.method} without answering it",
                    data={"server": self.server_id, "reason": "invalid_response"},
                )
            )

    async def _read_body(self, response: aiohttp.ClientResponse) -> Frame:
        """A JSON reply, read whole unless it is over the message limit."""
        limit = self.max_message_bytes
        length = response.content_length
        if length is not None:
            return Oversized(length, b"", b"") if length > limit else await response.read()  # the usual case
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                return Oversized(size, b"", b"")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _listen(self) -> None:
        """The optional GET stream: server-initiated messages not tied to a request."""
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        headers["Accept"] = "text/event-stream"
        failures = 0
        offered = True

        async def read(response: aiohttp.ClientResponse) -> None:
            nonlocal failures, offered
            if response.status == 405:
                offered = False  # the server offers no GET stream
            elif response.status != 200:
                failures += 1
            else:
                failures = 0
                async for data in sse_data(response.content.iter_any(), self.max_message_bytes):
                    self._receive(data, None)

        while not self.closed and failures < 5:
            try:
                await self._exchange("GET", headers, read)
            except GatewayError as exc:
                failures += 1
                log.debug("GET stream of %s broke: %s", self.server_id, exc.message)
            if not offered:
                return
            await asyncio.sleep(min(2.0**failures, 30.0))

    async def _close_transport(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        if self.session_id is None:
            return
        with contextlib.suppress(GatewayError, TimeoutError):
            await self._exchange("DELETE", self._headers, _ignore, timeout=aiohttp.ClientTimeout(total=5.0))
