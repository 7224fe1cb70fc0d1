"""The downstream side of MCP streamable HTTP: POST, GET and DELETE on an MCP endpoint.

This is the one boundary where `GatewayError`s become JSON-RPC errors and HTTP statuses. A POSTed
request is answered as JSON when the upstream's reply is all there is, and switches to an SSE
stream as soon as a related message (progress, a log line, a server-to-client request) arrives
first, so the common call costs no streaming. Written as a raw ASGI app: this is the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import INVALID_REQUEST, GatewayError, InvalidRequest, ShuttingDown
from gateway.events import RequestRecord
from gateway.protocol import (
    HEADER_REQUIRED_SINCE,
    SUPPORTED_VERSIONS,
    Message,
    check_message,
    dumps,
    error_response,
    is_request,
    loads,
    negotiate,
)
from gateway.sessions import ClientSession, is_end_of_stream
from gateway.upstream.base import Downstream

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Any
Send = Any

KEEPALIVE_SECONDS = 15.0
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class McpHandler(Protocol):
    """What answers the MCP messages of one endpoint: one server's proxy, or the aggregate."""

    async def initialize(self, session: ClientSession, message: Message) -> dict[str, Any]: ...

    async def request(self, session: ClientSession, message: Message, channel: Downstream) -> Message: ...

    async def notification(self, session: ClientSession, message: Message) -> None: ...


class HttpError(Exception):
    """An answer outside JSON-RPC: an HTTP status with a JSON body that says what was wrong."""

    def __init__(self, status: int, message: str, extra: dict[str, Any] | None = None, headers: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **(extra or {})}
        self.headers: list[tuple[bytes, bytes]] = headers or []


async def send_body(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_http_error(send: Send, error: HttpError) -> None:
    """An MCP endpoint's HTTP error, shaped as a JSON-RPC error (id null) so MCP clients show its message."""
    body: dict[str, Any] = {"code": INVALID_REQUEST, "message": error.body["error"]}
    if len(error.body) > 1:
        body["data"] = {k: v for k, v in error.body.items() if k != "error"}
    await send_body(send, error.status, dumps(error_response(None, body)), [*_JSON, *error.headers])


def sse_event(message: Message) -> bytes:
    return b"event: message\ndata: " + dumps(message) + b"\n\n"


class Auth:
    """Bearer tokens, compared in constant time; the caller's identity is a hash of its token."""

    def __init__(self, tokens: list[str]) -> None:
        self._digests = [hashlib.sha256(token.encode()).digest() for token in tokens]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def identity(self, headers: dict[bytes, bytes]) -> str:
        """The caller's identity; raises 401 when tokens are configured and none of them was sent."""
        value = headers.get(b"authorization", b"")
        token = value[7:].strip() if value[:7].lower() == b"bearer " else b""
        digest = hashlib.sha256(token).digest() if token else b""
        if self._digests and not any(hmac.compare_digest(digest, known) for known in self._digests):
            raise HttpError(
                401,
                "a valid bearer token is required" if token else "missing bearer token",
                headers=[(b"www-authenticate", b'Bearer realm="mcp-gateway"')],
            )
        return digest.hex()[:16] if token else "anonymous"


def origin_allowed(origin: bytes, allowed: list[str]) -> bool:
    if "*" in allowed:
        return True
    value = origin.decode("latin-1").rstrip("/")
    for entry in allowed:
        entry = entry.rstrip("/")
        if value == entry or (value.startswith(entry + ":") and value[len(entry) + 1 :].isdigit()):
            return True
    return False


def host_allowed(host: bytes, allowed: list[str]) -> bool:
    value = host.decode("latin-1").lower()
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 or value.startswith("[") else value
    if name.startswith("[") and "]" in value:
        name = value[: value.index("]") + 1]
    return name in allowed


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The request body, refused with 413 before it is read whole when it is over `limit`."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise HttpError(400, "client disconnected before sending the whole body")
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not event.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class PostChannel:
    """The reply to one POSTed request, as a `Downstream` for the upstream's related messages."""

    def __init__(self, session: ClientSession, send: Send, json_ok: bool, sse_ok: bool) -> None:
        self.session = session
        self._send = send
        self._json_ok = json_ok
        self._sse_ok = sse_ok
        self._queue: asyncio.Queue[Message | None] | None = None
        self._writer: asyncio.Task[None] | None = None

    def notify(self, message: Message) -> None:
        if not self._sse_ok:
            self.session.notify(message)  # the GET stream, if the client opened one
            return
        self._start_stream().put_nowait(message)

    async def request(self, message: Message) -> Message:
        return await self.session.relay(message, self.notify if self._sse_ok else None)

    def _start_stream(self) -> asyncio.Queue[Message | None]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._writer = asyncio.create_task(self._stream(self._queue))
        return self._queue

    async def _stream(self, queue: asyncio.Queue[Message | None]) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": _SSE})
        while (message := await queue.get()) is not None:
            await self._send({"type": "http.response.body", "body": sse_event(message), "more_body": True})
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def finish(self, response: Message) -> None:
        if self._queue is None and self._json_ok:
            await send_body(self._send, 200, dumps(response), _JSON)
            return
        queue = self._start_stream()
        queue.put_nowait(response)
        queue.put_nowait(None)
        assert self._writer is not None
        await self._writer


class McpEndpoint:
    """The ASGI app behind `/mcp` and `/servers/{server_id}/mcp`."""

    def __init__(self, gateway: Gateway, aggregate: bool) -> None:
        self.gateway = gateway
        self.aggregate = aggregate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        try:
            await self._dispatch(scope, receive, send, headers)
        except HttpError as exc:
            await send_http_error(send, exc)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> None:
        gateway = self.gateway
        if gateway.allowed_hosts is not None and not host_allowed(headers.get(b"host", b""), gateway.allowed_hosts):
            raise HttpError(421, "Misdirected Request: Host header not allowed (DNS rebinding protection)")
        origin = headers.get(b"origin")
        if origin is not None and not origin_allowed(origin, gateway.settings.allowed_origins):
            raise HttpError(403, f"origin {origin.decode('latin-1')!r} is not allowed")
        identity = gateway.auth.identity(headers)
        server_id: str | None = None if self.aggregate else scope["path_params"]["server_id"]
        handler = gateway.handler_for(server_id)
        method = scope["method"]
        if method == "POST":
            await self._post(scope, receive, send, headers, identity, server_id, handler)
        elif method == "GET":
            session = self._session(headers, identity, server_id)
            if gateway.draining:
                raise HttpError(503, "Service Unavailable: the gateway is shutting down; retry on another replica")
            await self._get(receive, send, session)
        elif method == "DELETE":
            gateway.sessions.end(self._session(headers, identity, server_id))
            await send_body(send, 200, b"", [])
        else:
            raise HttpError(405, f"method {method} is not allowed here", headers=[(b"allow", b"GET, POST, DELETE")])

    def _session(self, headers: dict[bytes, bytes], identity: str, server_id: str | None) -> ClientSession:
        raw = headers.get(b"mcp-session-id")
        if raw is None:
            raise HttpError(400, "Bad Request: Mcp-Session-Id header is required (initialize first)")
        session = self.gateway.sessions.get(raw.decode("latin-1"))
        if session is None or session.scope != server_id or session.identity != identity:
            raise HttpError(404, "Session not found: it ended or never existed; initialize a new one")
        version = headers.get(b"mcp-protocol-version")
        if version is not None:
            if version.decode("latin-1") not in SUPPORTED_VERSIONS:
                raise HttpError(
                    400,
                    f"Bad Request: unsupported MCP-Protocol-Version {version.decode('latin-1')!r}",
                    {"supported": list(SUPPORTED_VERSIONS)},
                )
        elif session.protocol_version >= HEADER_REQUIRED_SINCE:
            raise HttpError(400, "Bad Request: MCP-Protocol-Version header is required")
        session.last_used = time.monotonic()
        return session

    async def _post(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        identity: str,
        server_id: str | None,
        handler: McpHandler,
    ) -> None:
        gateway = self.gateway
        accept = headers.get(b"accept", b"*/*")
        any_type = b"*/*" in accept
        json_ok = any_type or b"application/json" in accept
        sse_ok = any_type or b"text/event-stream" in accept
        if not json_ok and not sse_ok:
            raise HttpError(406, "Not Acceptable: Accept must include application/json and text/event-stream")
        body = await read_body(receive, headers, gateway.settings.limits.max_body_bytes)
        request_id: Any = None
        try:
            parsed = loads(body)
            if isinstance(parsed, list):
                raise InvalidRequest("Invalid Request: JSON-RPC batches are not supported; send one message per POST")
            message = check_message(parsed)
            request_id = message.get("id")
            if gateway.draining:
                raise ShuttingDown(
                    "the gateway is shutting down; retry on another replica", data={"reason": "shutdown"}
                )
            if message.get("method") == "initialize":
                if "id" not in message:
                    raise InvalidRequest("Invalid Request: initialize must be a request with an id")
                await self._initialize(send, message, identity, server_id, handler)
                return
            session = self._session(headers, identity, server_id)
        except GatewayError as exc:
            # Faults of the HTTP exchange itself get their status; the rest is a JSON-RPC error in a 200.
            status = exc.http_status if exc.transport_level else 200
            await send_body(send, status, dumps(error_response(request_id, exc.to_error())), _JSON)
            return
        if not is_request(message):
            if "method" in message:
                await handler.notification(session, message)
            elif not session.answer(message):
                log.debug("client response to an unknown request id %r dropped", message.get("id"))
            await send_body(send, 202, b"", [])
            return
        channel = PostChannel(session, send, json_ok, sse_ok)
        response = await handler.request(session, message, channel)
        await channel.finish(response)

    async def _initialize(
        self, send: Send, message: Message, identity: str, server_id: str | None, handler: McpHandler
    ) -> None:
        params = message.get("params") or {}
        version = negotiate(params.get("protocolVersion"))
        started = time.perf_counter()
        session = self.gateway.sessions.create(server_id, identity, version)
        session.capabilities = params.get("capabilities") or {}
        error: GatewayError | None = None
        try:
            result = await handler.initialize(session, message)
        except GatewayError as exc:
            error = exc
            self.gateway.sessions.end(session)
            raise
        except BaseException:
            self.gateway.sessions.end(session)
            raise
        finally:
            transport = self.gateway.lifecycle.servers[server_id].transport if server_id else None
            self.gateway.observer.request_finished(
                RequestRecord(
                    server_id or "",
                    "initialize",
                    None,
                    time.perf_counter() - started,
                    error.error_type if error is not None else None,
                    None,
                    version,
                    transport,
                )
            )
        result["protocolVersion"] = version
        headers = [*_JSON, (b"mcp-session-id", session.id.encode())]
        await send_body(send, 200, dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}), headers)

    async def _get(self, receive: Receive, send: Send, session: ClientSession) -> None:
        if session.stream is not None:
            raise HttpError(409, "Conflict: this session already has an open GET stream")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        session.stream = queue
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        disconnected = asyncio.create_task(_wait_disconnect(receive))
        try:
            while not disconnected.done():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {getter, disconnected}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    if not done:
                        await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                    continue
                item = getter.result()
                if is_end_of_stream(item):
                    break
                await send({"type": "http.response.body", "body": sse_event(item), "more_body": True})
        finally:
            disconnected.cancel()
            if session.stream is queue:
                session.stream = None
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
