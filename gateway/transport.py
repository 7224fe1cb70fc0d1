"""The downstream side of MCP streamable HTTP: POST, GET and DELETE on an MCP endpoint.

This is the one boundary where `GatewayError`s become JSON-RPC errors and HTTP statuses. A POSTed
request is answered as JSON when the upstream's reply is all there is, and switches to an SSE
stream as soon as a related message (progress, a log line, a server-to-client request) arrives
first, so the common call costs no streaming. Written as a raw ASGI app: this is the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway import listen, modern
from gateway.auth import Auth
from gateway.errors import GatewayError, InvalidRequest, ShuttingDown
from gateway.events import Observer, Rejection, RequestRecord
from gateway.holds import Asking, Holds
from gateway.protocol import (
    HEADER_REQUIRED_SINCE,
    SUPPORTED_VERSIONS,
    Message,
    check_message,
    dumps,
    error_response,
    is_request,
    is_valid_id,
    loads,
    negotiate,
)
from gateway.replies import ModernChannel, PostChannel, acceptable, pump, read_body
from gateway.responses import JSON, HttpError, Receive, Scope, Send, send_body, send_http_error
from gateway.sessions import DownstreamSession, SessionStore
from gateway.stream import EventStream
from gateway.upstream.base import ClientChannel
from telemetry.catalog import GATEWAY_SERVER

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0


class McpHandler(Protocol):
    """What answers the MCP messages of one endpoint: one server's proxy, or the aggregate."""

    server_id: str | None  # the one server behind the endpoint; None for the aggregate
    transport: str | None  # that server's transport

    async def initialize(self, session: DownstreamSession, message: Message) -> dict[str, Any]: ...

    async def request(self, session: DownstreamSession, message: Message, channel: ClientChannel) -> Message: ...

    async def notification(self, session: DownstreamSession, message: Message) -> None: ...

    async def discover(self, session: DownstreamSession, message: Message) -> Message: ...

    def tool(self, message: Message) -> modern.ToolMarks | None:
        """The schema and marks of the tool a tools/call names, when known; None otherwise."""
        ...

    def server_info(self, response: Message) -> Any:
        """The `serverInfo` of whoever answered `response`."""
        ...

    def may_ask(self) -> bool:
        """Whether a server behind the endpoint may ask the client something mid-call (one of the 2025 era)."""
        ...


@dataclass(slots=True)
class Readiness:
    """Whether the gateway takes work: `ready` once started, `draining` from the first sign of shutdown."""

    ready: bool = False
    draining: bool = False


@dataclass(frozen=True, slots=True)
class Edge:
    """What every MCP endpoint shares: who may call, the client sessions and listen streams, the body limit, the
    observer."""

    auth: Auth
    sessions: SessionStore
    listeners: listen.Listeners
    holds: Holds
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
        elif method in ("GET", "DELETE") and b"mcp-session-id" not in exchange.headers:
            # Only a 2025 session has a GET stream to open or an end to DELETE; 2026 has neither.
            raise HttpError(405, f"{method} is for 2025 sessions: send Mcp-Session-Id", headers=[(b"allow", b"POST")])
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
        json_ok, sse_ok = acceptable(exchange.headers)
        body = await read_body(exchange.receive, exchange.headers, self.edge.max_body_bytes)
        request_id: Any = None
        modern_era = False
        try:
            parsed = loads(body)
            request_id = readable_id(parsed)  # every error below answers the request's id
            modern_era = modern.is_modern(exchange.headers, parsed)
            message = self._message(parsed)
            if modern_era:
                await self._modern(exchange, message, json_ok, sse_ok)
                return
            if message.get("method") == "initialize":
                await self._initialize(exchange, message)
                return
            session = self._session(exchange)
        except HttpError as exc:
            exc.request_id = request_id
            raise
        except GatewayError as exc:
            if exc.rejection is not None:
                self.edge.observer.rejected(exchange.server_id, exc.rejection)
            await send_body(
                exchange.send, _status(exc, modern_era), dumps(error_response(request_id, exc.to_error())), JSON
            )
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

    def _message(self, parsed: Any) -> Message:
        """The one JSON-RPC message a POST carries; raises the error that says what is wrong with it."""
        if isinstance(parsed, list):
            raise InvalidRequest("Invalid Request: JSON-RPC batches are not supported; send one message per POST")
        message = check_message(parsed)
        if self.edge.readiness.draining:
            raise ShuttingDown("the gateway is shutting down; retry on another replica", data={"reason": "shutdown"})
        if message.get("method") == "initialize" and "id" not in message:
            raise InvalidRequest("Invalid Request: initialize must be a request with an id")
        return message

    async def _modern(self, exchange: Exchange, message: Message, json_ok: bool, sse_ok: bool) -> None:
        """A POST of the 2026 revision: one self-contained request, answered on its own (see `gateway.modern`)."""
        if not is_request(message):
            if "method" not in message:
                raise InvalidRequest("Invalid Request: a client of MCP 2026-07-28 sends no responses")
            modern.check_notification(exchange.headers)
            await send_body(exchange.send, 202, b"", [])  # nothing for a client notification to act on over HTTP
            return
        handler, method = exchange.handler, message["method"]
        started = time.perf_counter()
        try:
            envelope = modern.check_request(message, exchange.headers, exchange.scope["headers"])
            modern.check_method(method)
            if method == "tools/call":
                modern.check_param_headers(handler.tool(message), message, exchange.headers)
        except GatewayError as exc:
            self.edge.observer.request_finished(
                _unanswered(exchange, method, time.perf_counter() - started, exc.error_type)
            )
            raise
        session = DownstreamSession("", exchange.server_id, exchange.identity, envelope.version, 0)
        session.capabilities = envelope.capabilities
        session.client_info = envelope.client_info
        if method == "subscriptions/listen":
            await self._listen(exchange, message, sse_ok)
            return
        if method == "server/discover":
            response = await handler.discover(session, message)
            channel = PostChannel(session, exchange.send, json_ok, sse_ok, _ignore)
        else:
            server_id, observer = exchange.server_id, self.edge.observer

            def overflowed() -> None:
                observer.rejected(server_id, Rejection.STREAM_OVERFLOW)

            session.stream_buffer = self.edge.sessions.limits.stream_buffer
            holds, where = self.edge.holds, server_id or GATEWAY_SERVER
            resumed = holds.resume(message, exchange.identity, where)  # a retry of a held call
            call, asking = resumed or (None, Asking(envelope.capabilities))
            channel = ModernChannel(envelope, asking, holds.full, session, exchange.send, json_ok, sse_ok, overflowed)
            if call is None and not handler.may_ask():  # 2026 servers ask nothing mid-call: no call to hold
                response = await handler.request(session, message, channel)
            else:
                call = call or asyncio.create_task(handler.request(session, message, channel))
                response, held = await holds.answer(call, asking, exchange.identity, where, message)
                if held:
                    observer.input_required(where, "held")
                response = {**response, "id": message["id"]}  # a retry's answer goes to the retry
        response = modern.to_modern(response, message, handler.server_info(response))
        error = response.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        status = modern.ERROR_STATUS.get(code, 200) if isinstance(code, int) else 200
        await channel.finish(response, status)

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
            session.client_info = params.get("clientInfo")
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
        if session.stream is not None:
            raise HttpError(409, "Conflict: this session already has an open GET stream")
        stream = session.open_stream()
        try:
            await pump(stream, exchange.send, exchange.receive, KEEPALIVE_SECONDS)
        finally:
            if session.stream is stream:
                session.stream = None

    async def _listen(self, exchange: Exchange, message: Message, sse_ok: bool) -> None:
        """`subscriptions/listen`: acknowledged first, then the notifications asked for, until either side ends it."""
        if not sse_ok:
            raise HttpError(
                406, "Not Acceptable: subscriptions/listen answers with an event stream (text/event-stream)"
            )
        honoured = listen.honoured_filter(message.get("params") or {})
        edge = self.edge
        if edge.readiness.draining:
            raise ShuttingDown("the gateway is shutting down; retry on another replica", data={"reason": "shutdown"})
        server_id = exchange.server_id

        def overflowed() -> None:
            edge.observer.rejected(server_id, Rejection.STREAM_OVERFLOW)

        stream = EventStream(edge.sessions.limits.stream_buffer, "listen", overflowed, closes_on_overflow=True)
        listener = listen.Listener(message["id"], server_id, exchange.identity, honoured, stream)
        stream.send(listener.acknowledgement())
        edge.listeners.add(listener)
        edge.observer.listening(server_id, True)
        try:
            await pump(stream, exchange.send, exchange.receive, KEEPALIVE_SECONDS)
        finally:
            edge.listeners.remove(listener)
            edge.observer.listening(server_id, False)


def readable_id(parsed: Any) -> Any:
    """The id of a request whose body could be read, for its error; None when there is none to read."""
    request_id = parsed.get("id") if isinstance(parsed, dict) else None
    return request_id if is_valid_id(request_id) else None


def _status(error: GatewayError, modern_era: bool) -> int:
    """The HTTP status of a JSON-RPC error: 2026 maps codes to statuses; 2025 uses one for transport faults only."""
    if modern_era:
        return modern.ERROR_STATUS.get(error.code, error.http_status if error.transport_level else 200)
    return error.http_status if error.transport_level else 200


def _unanswered(exchange: Exchange, method: str, seconds: float, error_type: str) -> RequestRecord:
    """The record of a 2026 request refused before any server was asked."""
    return RequestRecord(
        server_id=exchange.server_id or "",
        method=method,
        target=None,
        duration=seconds,
        error_type=error_type,
        upstream_duration=None,
        protocol_version=modern.LATEST_MODERN,
        upstream_transport=exchange.handler.transport,
    )


def _ignore() -> None:
    pass
