"""The downstream side of MCP streamable HTTP: POST, GET and DELETE on an MCP endpoint.

This is the one boundary where `GatewayError`s become JSON-RPC errors and HTTP statuses. A POSTed
request is answered as JSON when the upstream's reply is all there is, and switches to an SSE
stream as soon as a related message (progress, a log line, a server-to-client request) arrives
first, so the common call costs no streaming. Written as a raw ASGI app: this is the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.auth import Auth
from gateway.errors import GatewayError, InvalidRequest, ShuttingDown, TooDeep, UpstreamInvalid
from gateway.events import Observer, Rejection, RequestRecord
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
from gateway.responses import JSON, HttpError, Receive, Scope, Send, send_body, send_http_error
from gateway.sessions import DownstreamSession, SessionStore
from gateway.stream import EventStream, sse_frame
from gateway.upstream.base import ClientChannel

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class McpHandler(Protocol):
    """What answers the MCP messages of one endpoint: one server's proxy, or the aggregate."""

    server_id: str | None  # the one server behind the endpoint; None for the aggregate
    transport: str | None  # that server's transport

    async def initialize(self, session: DownstreamSession, message: Message) -> dict[str, Any]: ...

    async def request(self, session: DownstreamSession, message: Message, channel: ClientChannel) -> Message: ...

    async def notification(self, session: DownstreamSession, message: Message) -> None: ...


def encode_response(response: Message) -> bytes:
    """A response as JSON; an upstream answer nested too deeply to be written becomes an error saying so."""
    try:
        return dumps(response)
    except TooDeep:
        error = UpstreamInvalid("the server's answer is nested too deeply to be passed on", data={"reason": "too_deep"})
        return dumps(error_response(response.get("id"), error.to_error()))


def _acceptable(headers: dict[bytes, bytes]) -> tuple[bool, bool]:
    """Whether the client takes a JSON reply, and an SSE one; 406 when it takes neither."""
    json_ok, sse_ok = _reply_kinds(headers.get(b"accept"))
    if not json_ok and not sse_ok:
        raise HttpError(406, "Not Acceptable: Accept must include application/json and text/event-stream")
    return json_ok, sse_ok


@functools.lru_cache(maxsize=256)  # a client sends the same Accept on every request: parse it once
def _reply_kinds(accept: bytes | None) -> tuple[bool, bool]:
    value = accept.decode("latin-1") if accept is not None else None
    return media_quality(value, "application/json") > 0, media_quality(value, "text/event-stream") > 0


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
    """The reply to one POSTed request, as a `ClientChannel` for the upstream's related messages.

    Related messages switch the reply to an SSE stream, bounded like every client stream: what does
    not fit while the client is not reading is dropped (notifications) or refused (server requests),
    and the response itself always goes through.
    """

    def __init__(
        self, session: DownstreamSession, send: Send, json_ok: bool, sse_ok: bool, on_overflow: Callable[[], None]
    ) -> None:
        self.session = session
        self._send = send
        self._json_ok = json_ok
        self._sse_ok = sse_ok
        self._on_overflow = on_overflow
        self._stream: EventStream | None = None
        self._writer: asyncio.Task[None] | None = None

    def notify(self, message: Message) -> bool:
        if not self._sse_ok:
            return self.session.notify(message)  # the GET stream, if the client opened one
        return self._start_stream().send(message)

    async def request(self, message: Message) -> Message:
        return await self.session.relay(message, self.notify if self._sse_ok else None)

    def _start_stream(self) -> EventStream:
        if self._stream is None:
            self._stream = EventStream(self.session.stream_buffer, "reply", self._on_overflow)
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
            await send_body(self._send, 200, body, JSON)
            return
        stream = self._start_stream()
        stream.put(sse_frame(body), force=True)
        stream.close()
        assert self._writer is not None
        await self._writer


@dataclass(slots=True)
class Readiness:
    """Whether the gateway takes work: `ready` once started, `draining` from the first sign of shutdown."""

    ready: bool = False
    draining: bool = False


@dataclass(frozen=True, slots=True)
class Edge:
    """What every MCP endpoint shares: who may call, the client sessions, the body limit, the observer."""

    auth: Auth
    sessions: SessionStore
    observer: Observer
    readiness: Readiness
    max_body_bytes: int


# The handler of a request's endpoint: the aggregate, or one server's proxy (HTTP 404 for an unknown id).
Resolve = Callable[[Scope], McpHandler]


@dataclass(slots=True)
class Exchange:
    """One HTTP request on an MCP endpoint, as the steps of its handling need it."""

    scope: Scope
    receive: Receive
    send: Send
    headers: dict[bytes, bytes]
    identity: str  # who sent it (see `gateway.auth`)
    handler: McpHandler

    @property
    def server_id(self) -> str | None:
        return self.handler.server_id


class McpEndpoint:
    """The ASGI app behind `/mcp` and `/servers/{server_id}/mcp`."""

    def __init__(self, edge: Edge, resolve: Resolve) -> None:
        self.edge = edge
        self.resolve = resolve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        handler: McpHandler | None = None
        try:
            identity = self.edge.auth.identity(headers)  # before anything is said of the servers
            handler = self.resolve(scope)
            await self._dispatch(Exchange(scope, receive, send, headers, identity, handler))
        except HttpError as exc:
            if exc.rejection is not None:
                self.edge.observer.rejected(handler.server_id if handler is not None else None, exc.rejection)
            await send_http_error(send, exc)

    async def _dispatch(self, exchange: Exchange) -> None:
        method = exchange.scope["method"]
        if method == "POST":
            await self._post(exchange)
        elif method == "GET":
            session = self._session(exchange)
            if self.edge.readiness.draining:
                raise HttpError(503, "Service Unavailable: the gateway is shutting down; retry on another replica")
            await self._get(exchange, session)
        elif method == "DELETE":
            self.edge.sessions.end(self._session(exchange))
            await send_body(exchange.send, 200, b"", [])
        else:
            raise HttpError(405, f"method {method} is not allowed here", headers=[(b"allow", b"GET, POST, DELETE")])

    def _session(self, exchange: Exchange) -> DownstreamSession:
        headers = exchange.headers
        raw = headers.get(b"mcp-session-id")
        if raw is None:
            raise HttpError(400, "Bad Request: Mcp-Session-Id header is required (initialize first)")
        session = self.edge.sessions.get(raw.decode("latin-1"))
        if session is None or session.scope != exchange.server_id or session.identity != exchange.identity:
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

    async def _post(self, exchange: Exchange) -> None:
        """A POSTed message: read and checked, then answered as a request, a notification or a response."""
        json_ok, sse_ok = _acceptable(exchange.headers)
        body = await read_body(exchange.receive, exchange.headers, self.edge.max_body_bytes)
        request_id: Any = None
        try:
            message = self._message(body)
            request_id = message.get("id")
            if message.get("method") == "initialize":
                await self._initialize(exchange, message)
                return
            session = self._session(exchange)
        except GatewayError as exc:
            if exc.rejection is not None:
                self.edge.observer.rejected(exchange.server_id, exc.rejection)
            # Faults of the HTTP exchange itself get their status; the rest is a JSON-RPC error in a 200.
            status = exc.http_status if exc.transport_level else 200
            await send_body(exchange.send, status, dumps(error_response(request_id, exc.to_error())), JSON)
            return
        if not is_request(message):
            if "method" in message:
                await exchange.handler.notification(session, message)
            elif not session.answer(message):
                log.debug("client response to an unknown request id %r dropped", message.get("id"))
            await send_body(exchange.send, 202, b"", [])
            return
        server_id, observer = exchange.server_id, self.edge.observer

        def overflowed() -> None:
            observer.rejected(server_id, Rejection.STREAM_OVERFLOW)

        channel = PostChannel(session, exchange.send, json_ok, sse_ok, overflowed)
        response = await exchange.handler.request(session, message, channel)
        await channel.finish(response)

    def _message(self, body: bytes) -> Message:
        """The one JSON-RPC message a POST carries; raises the error that says what is wrong with it."""
        parsed = loads(body)
        if isinstance(parsed, list):
            raise InvalidRequest("Invalid Request: JSON-RPC batches are not supported; send one message per POST")
        message = check_message(parsed)
        if self.edge.readiness.draining:
            raise ShuttingDown("the gateway is shutting down; retry on another replica", data={"reason": "shutdown"})
        if message.get("method") == "initialize" and "id" not in message:
            raise InvalidRequest("Invalid Request: initialize must be a request with an id")
        return message

    async def _initialize(self, exchange: Exchange, message: Message) -> None:
        params = message.get("params") or {}
        version = negotiate(params.get("protocolVersion"))
        started = time.perf_counter()
        sessions = self.edge.sessions
        session: DownstreamSession | None = None
        error: GatewayError | None = None
        try:
            session = sessions.create(exchange.server_id, exchange.identity, version)
            capabilities = params.get("capabilities")
            session.capabilities = capabilities if isinstance(capabilities, dict) else {}
            result = await exchange.handler.initialize(session, message)
        except BaseException as exc:
            error = exc if isinstance(exc, GatewayError) else None
            if session is not None:
                sessions.end(session)
            raise
        finally:
            record = RequestRecord(
                server_id=exchange.server_id or "",
                method="initialize",
                target=None,
                duration=time.perf_counter() - started,
                error_type=error.error_type if error is not None else None,
                upstream_duration=None,
                protocol_version=version,
                upstream_transport=exchange.handler.transport,
            )
            self.edge.observer.request_finished(record)
        result["protocolVersion"] = version
        headers = [*JSON, (b"mcp-session-id", session.id.encode())]
        await send_body(exchange.send, 200, dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}), headers)

    async def _get(self, exchange: Exchange, session: DownstreamSession) -> None:
        send = exchange.send
        if session.stream is not None:
            raise HttpError(409, "Conflict: this session already has an open GET stream")
        stream = session.open_stream()
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        disconnected = asyncio.create_task(_wait_disconnect(exchange.receive))
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
