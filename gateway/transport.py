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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import INVALID_REQUEST, GatewayError, InvalidRequest, ShuttingDown, TooDeep, UpstreamInvalid
from gateway.events import Rejection, RequestRecord
from gateway.headers import media_quality
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
from gateway.sessions import ClientSession
from gateway.stream import EventStream, sse_event, sse_frame
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

    def __init__(
        self,
        status: int,
        message: str,
        extra: dict[str, Any] | None = None,
        headers: Any = None,
        rejection: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **(extra or {})}
        self.headers: list[tuple[bytes, bytes]] = headers or []
        self.rejection = rejection  # an `events.Rejection` reason, when a limit or a check refused


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


def encode_response(response: Message) -> bytes:
    """A response as JSON; an upstream answer nested too deeply to be written becomes an error saying so."""
    try:
        return dumps(response)
    except TooDeep:
        error = UpstreamInvalid("the server's answer is nested too deeply to be passed on", data={"reason": "too_deep"})
        return dumps(error_response(response.get("id"), error.to_error()))


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
                rejection=Rejection.UNAUTHORIZED,
            )
        return digest.hex()[:16] if token else "anonymous"


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The request body, refused with 413 before it is read whole when it is over `limit`."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(
            413,
            f"request body of {int(declared)} bytes is over the limit of {limit} bytes",
            rejection=Rejection.BODY_TOO_LARGE,
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise HttpError(400, "client disconnected before sending the whole body")
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body is over the limit of {limit} bytes", rejection=Rejection.BODY_TOO_LARGE)
        chunks.append(chunk)
        if not event.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class PostChannel:
    """The reply to one POSTed request, as a `Downstream` for the upstream's related messages.

    Related messages switch the reply to an SSE stream, bounded like every client stream: what does
    not fit while the client is not reading is dropped (notifications) or refused (server requests),
    and the response itself always goes through.
    """

    def __init__(
        self, session: ClientSession, send: Send, json_ok: bool, sse_ok: bool, on_overflow: Callable[[], None]
    ) -> None:
        self.session = session
        self._send = send
        self._json_ok = json_ok
        self._sse_ok = sse_ok
        self._on_overflow = on_overflow
        self._overflowed = False
        self._stream: EventStream | None = None
        self._writer: asyncio.Task[None] | None = None

    def notify(self, message: Message) -> bool:
        if not self._sse_ok:
            return self.session.notify(message)  # the GET stream, if the client opened one
        try:
            event = sse_event(message)
        except TooDeep:
            log.warning("a message nested too deeply for the client's stream was dropped: %.200r", message)
            return False
        if self._start_stream().put(event):
            return True
        if not self._overflowed:
            self._overflowed = True
            log.warning("a client is not reading its reply stream: dropping what does not fit")
            self._on_overflow()
        return False

    async def request(self, message: Message) -> Message:
        return await self.session.relay(message, self.notify if self._sse_ok else None)

    def _start_stream(self) -> EventStream:
        if self._stream is None:
            self._stream = EventStream(self.session.stream_buffer)
            self._writer = asyncio.create_task(self._write(self._stream))
        return self._stream

    async def _write(self, stream: EventStream) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": _SSE})
        while (event := await stream.get()) is not None:
            await self._send({"type": "http.response.body", "body": event, "more_body": True})
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def finish(self, response: Message) -> None:
        body = encode_response(response)
        if self._stream is None and self._json_ok:
            await send_body(self._send, 200, body, _JSON)
            return
        stream = self._start_stream()
        stream.put(sse_frame(body), force=True)
        stream.close()
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
            if exc.rejection is not None:
                self.gateway.observer.rejected(self._known_server(scope), exc.rejection)
            await send_http_error(send, exc)

    def _known_server(self, scope: Scope) -> str | None:
        """The configured server this endpoint serves; None for /mcp or an unknown id (never a label value)."""
        server_id = None if self.aggregate else scope["path_params"]["server_id"]
        return server_id if server_id in self.gateway.lifecycle.servers else None

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> None:
        gateway = self.gateway
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
        accept = headers[b"accept"].decode("latin-1") if b"accept" in headers else None
        json_ok = media_quality(accept, "application/json") > 0
        sse_ok = media_quality(accept, "text/event-stream") > 0
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
            if exc.rejection is not None:
                gateway.observer.rejected(server_id, exc.rejection)
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

        def overflowed() -> None:
            gateway.observer.rejected(server_id, Rejection.STREAM_OVERFLOW)

        channel = PostChannel(session, send, json_ok, sse_ok, overflowed)
        response = await handler.request(session, message, channel)
        await channel.finish(response)

    async def _initialize(
        self, send: Send, message: Message, identity: str, server_id: str | None, handler: McpHandler
    ) -> None:
        params = message.get("params") or {}
        version = negotiate(params.get("protocolVersion"))
        started = time.perf_counter()
        session: ClientSession | None = None
        error: GatewayError | None = None
        try:
            session = self.gateway.sessions.create(server_id, identity, version)
            capabilities = params.get("capabilities")
            session.capabilities = capabilities if isinstance(capabilities, dict) else {}
            result = await handler.initialize(session, message)
        except BaseException as exc:
            error = exc if isinstance(exc, GatewayError) else None
            if session is not None:
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
        stream = session.open_stream()
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        disconnected = asyncio.create_task(_wait_disconnect(receive))
        try:
            while not disconnected.done():
                getter = asyncio.ensure_future(stream.get())
                done, _ = await asyncio.wait(
                    {getter, disconnected}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    if not done:
                        await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                    continue
                event = getter.result()
                if event is None:
                    break
                await send({"type": "http.response.body", "body": event, "more_body": True})
        finally:
            disconnected.cancel()
            if session.stream is stream:
                session.stream = None
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
