"""What every upstream session does whatever carries its bytes: ids, in-flight requests, routing.

Many downstream clients share one upstream session, so each forwarded request gets a fresh upstream
id (two clients' `"id": 1` never meet upstream) and progress tokens are remapped the same way. Every
message the upstream sends is routed here: responses to the request that awaits them, progress and
server-to-client requests to the downstream that made the related request, the rest to a handler.
Transports (`stdio.py`, `http.py`) only implement `_send`, `_close_transport` and feed `_dispatch`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway import __version__, modern
from gateway.errors import (
    GatewayError,
    MethodNotFound,
    UpstreamClosed,
    UpstreamInvalid,
    UpstreamTimeout,
    UpstreamTooLarge,
)
from gateway.protocol import LATEST_VERSION, Message, error_response, is_valid_id, response_problem
from gateway.upstream.framing import Frame, Oversized

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024  # bytes of one upstream message (limits.max_upstream_message_bytes)
CLIENT_INFO = {"name": "mcp-gateway", "version": __version__}
# Declared upstream so servers may use them; each request is relayed to a downstream client that
# declared the capability, or answered with an error.
CLIENT_CAPABILITIES: dict[str, Any] = {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {}}


class ClientChannel(Protocol):
    """A channel back to one downstream client: where related upstream messages go."""

    def notify(self, message: Message) -> bool:
        """Pass on a related message; False when it could not be (no stream, or one not being read)."""
        ...

    async def request(self, message: Message) -> Message:
        """Relay a server-to-client request; return the client's response (any id)."""
        ...


class UpstreamHandler(Protocol):
    """Receives what no single downstream request owns."""

    def on_notification(self, session: UpstreamSession, message: Message) -> None: ...

    def on_closed(self, session: UpstreamSession, reason: str, detail: str) -> None: ...


@dataclass(slots=True, eq=False)
class Pending:
    future: asyncio.Future[Message]
    client_id: Any
    downstream: ClientChannel | None
    owner: object = None  # the client session that sent it, for cancellation
    progress_token: Any = None
    method: str = ""
    headers: dict[str, str] | None = None  # HTTP headers of this request alone (a 2026 request's Mcp-*)


class UpstreamSession(ABC):
    """One initialized MCP session with one upstream server."""

    transport: str = ""
    carried_by: str = ""  # where its messages arrive, for the log ("on stdout")
    sends_headers = False  # each request can carry HTTP headers of its own (a 2026 request's Mcp-*)
    cancels_by_closing = False  # a 2026 request is cancelled by abandoning its exchange, not by a notification

    def __init__(
        self, server_id: str, handler: UpstreamHandler | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE
    ) -> None:
        self.server_id = server_id
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.identity = ""  # whose session this is; "" when every caller shares it
        self.initialize_result: dict[str, Any] = {}
        self.protocol_version = LATEST_VERSION
        self.modern = False  # the server speaks MCP 2026-07-28: no handshake, an envelope on every request
        self.discover_result: dict[str, Any] = {}  # its server/discover answer, when modern
        self.closed = False
        self.close_reason = ""
        self.created = time.monotonic()
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._progress: dict[str, Pending] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- what transports implement ---------------------------------------------------------------

    @abstractmethod
    async def _send(self, message: Message, pending: Pending | None) -> None:
        """Deliver one message upstream. For HTTP this also reads the reply and dispatches it."""

    @abstractmethod
    async def _close_transport(self) -> None: ...

    @property
    def pid(self) -> int | None:
        return None

    def _negotiated(self) -> None:  # noqa: B027 - a hook: only HTTP has a header to set
        """The handshake settled `protocol_version`; what is sent from now on says so."""

    # -- the client side ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def adopt(self, discovered: dict[str, Any]) -> None:
        """Speak 2026-07-28 with the server that answered discover with `discovered`."""
        self.modern = True
        self.protocol_version = modern.LATEST_MODERN
        self.discover_result = discovered
        self.initialize_result = modern.as_initialize_result(discovered)

    async def initialize(self, timeout: float) -> None:
        """The MCP handshake, as the gateway's own client identity."""
        message: Message = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": LATEST_VERSION,
                "capabilities": CLIENT_CAPABILITIES,
                "clientInfo": CLIENT_INFO,
            },
        }
        response = await self.request(message, timeout=timeout)
        if "error" in response:
            raise GatewayError(f"initialize failed: {response['error'].get('message', response['error'])}")
        result = response.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
            raise GatewayError("initialize answered without a result naming its protocol version")
        self.initialize_result = result
        self.protocol_version = result["protocolVersion"]
        self._negotiated()
        await self.notify({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def request(
        self,
        message: Message,
        *,
        timeout: float,
        downstream: ClientChannel | None = None,
        owner: object = None,
        headers: dict[str, str] | None = None,
    ) -> Message:
        """Forward a request; return the upstream's response carrying the caller's own id again.

        `headers` go with this request alone, over HTTP (a 2026 request's `Mcp-*` headers).
        """
        if self.closed:
            raise UpstreamClosed(
                f"server {self.server_id!r} is not connected ({self.close_reason or 'closed'})",
                data={"server": self.server_id, "reason": self.close_reason or "closed"},
            )
        if self.modern:  # the gateway's own requests (tool lists, checks) carry its envelope
            message = modern.with_envelope(message, {}, CLIENT_INFO, None)
            if headers is None and self.sends_headers:
                headers = modern.request_headers(message)
        upstream_id = next(self._ids)
        pending = Pending(asyncio.get_running_loop().create_future(), message["id"], downstream, owner)
        pending.method = message.get("method", "")
        pending.headers = headers
        # What goes upstream is a copy: the caller's message stays as the client sent it (for a retry).
        outgoing = {**message, "id": upstream_id}
        params = message.get("params")
        if params is not None:
            meta = params.get("_meta")
            if isinstance(meta, dict) and "progressToken" in meta:
                pending.progress_token = meta["progressToken"]
                token = f"gw-{upstream_id}"
                outgoing["params"] = {**params, "_meta": {**meta, "progressToken": token}}
                self._progress[token] = pending
        self._pending[upstream_id] = pending
        try:
            async with asyncio.timeout(timeout):
                await self._send(outgoing, pending)
                response = await pending.future
        except TimeoutError:
            self._spawn(self._cancel_upstream(upstream_id, "request timed out at the gateway"))
            raise UpstreamTimeout(
                f"server {self.server_id!r} did not answer {pending.method} within {timeout:g}s",
                data={"server": self.server_id, "reason": "timeout", "timeout": timeout},
            ) from None
        except asyncio.CancelledError:
            # The client went away: tell the upstream to stop working on it.
            if not self.closed:
                self._spawn(self._cancel_upstream(upstream_id, "client disconnected"))
            raise
        finally:
            self._pending.pop(upstream_id, None)
            if pending.future.done() and not pending.future.cancelled():
                pending.future.exception()  # retrieved: the caller got its error another way
            if pending.progress_token is not None:
                self._progress.pop(f"gw-{upstream_id}", None)
        response["id"] = pending.client_id
        return response

    async def notify(self, message: Message) -> None:
        if not self.closed:
            await self._send(message, None)

    def cancel(self, client_id: Any, owner: object, reason: str | None) -> bool:
        """A downstream `notifications/cancelled`: find its request and cancel it upstream."""
        for upstream_id, pending in list(self._pending.items()):
            if pending.client_id == client_id and pending.owner is owner:
                self._spawn(self._cancel_upstream(upstream_id, reason))
                pending.future.set_exception(
                    GatewayError("cancelled by the client", data={"server": self.server_id, "reason": "cancelled"})
                )
                return True
        return False

    async def _cancel_upstream(self, upstream_id: int, reason: str | None) -> None:
        if self.modern and self.cancels_by_closing:
            return  # over HTTP, a 2026 request is cancelled by abandoning its POST, which is done
        params: dict[str, Any] = {"requestId": upstream_id}
        if reason:
            params["reason"] = reason
        try:
            await self.notify({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})
        except GatewayError as exc:
            log.debug("could not send cancellation to %s: %s", self.server_id, exc)

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self._mark_closed(reason, "closed by the gateway")
        await self._close_transport()

    # -- what the upstream sends -----------------------------------------------------------------

    def _receive(self, frame: Frame, via: Pending | None = None) -> None:
        """One framed message (a stdio line, an HTTP body, an SSE event's data): parsed, then routed."""
        if isinstance(frame, Oversized):
            self._oversized(frame, via)
            return
        frame = frame.strip()
        if not frame:
            return
        try:
            parsed: Any = orjson.loads(frame)
        except orjson.JSONDecodeError:
            log.warning(
                "server %s sent a message that is not JSON%s; skipped: %.200r", self.server_id, self.carried_by, frame
            )
            return
        for item in parsed if isinstance(parsed, list) else (parsed,):
            self._dispatch(item, via)

    def _dispatch(self, message: Any, via: Pending | None = None) -> None:
        """Route one message from the upstream. `via` is the request whose reply stream carried it.

        What the upstream sends is checked before it is used: a message of the wrong shape is logged
        and skipped (a response of the wrong shape fails its request), and nothing it sends can
        raise into the task that reads the transport, which would leave the server wedged.
        """
        try:
            self._route(message, via)
        except Exception:  # a bug, not the upstream's: still never the reader's end
            log.exception("server %s: a message could not be routed; skipped: %.200r", self.server_id, message)

    def _route(self, message: Any, via: Pending | None) -> None:
        if not isinstance(message, dict):
            self._skip("a message that is not a JSON object", message)
            return
        method = message.get("method")
        if method is None:
            self._route_response(message)
            return
        params = message.get("params")
        if not isinstance(method, str) or not (params is None or isinstance(params, dict)):
            self._skip("a message whose method is not a string or whose params are not an object", message)
            return
        if "id" in message:
            if not is_valid_id(message["id"]):
                self._skip("a request whose id is not a string or an integer", message)
                return
            target = via.downstream if via is not None else self._sole_downstream()
            self._spawn(self._relay_request(message, target))
            return
        if method == "notifications/progress":
            owner = self._progress.get(str((params or {}).get("progressToken")))
            if owner is not None:
                if owner.downstream is not None:
                    message["params"] = {**(params or {}), "progressToken": owner.progress_token}
                    owner.downstream.notify(message)
                return
        target = via.downstream if via is not None else None
        if target is None and method == "notifications/message":
            target = self._sole_downstream()
        if target is not None:
            target.notify(message)
        elif self.handler is not None:
            self.handler.on_notification(self, message)

    def _route_response(self, message: Message) -> None:
        upstream_id = message.get("id")
        pending = self._pending.get(upstream_id) if type(upstream_id) is int else None
        if pending is None or pending.future.done():
            self._skip("a response to no request in flight", message, logging.DEBUG)
            return
        problem = response_problem(message)
        if problem is None:
            pending.future.set_result(message)
            return
        log.warning("server %s answered %s with an invalid response: %s", self.server_id, pending.method, problem)
        pending.future.set_exception(
            UpstreamInvalid(
                f"server {self.server_id!r} sent an invalid response to {pending.method}: {problem}",
                data={"server": self.server_id, "reason": "invalid_response"},
            )
        )

    def _skip(self, what: str, message: Any, level: int = logging.WARNING) -> None:
        log.log(level, "server %s sent %s; skipped: %.200r", self.server_id, what, message)

    def _oversized(self, frame: Oversized, via: Pending | None = None) -> None:
        """A message over the size limit was dropped unread: fail the request it answered, if known."""
        upstream_id = frame.response_id()
        pending = via if via is not None else self._pending.get(upstream_id) if upstream_id is not None else None
        log.error(
            "server %s sent a message of over %d bytes (limits.max_upstream_message_bytes); dropped%s",
            self.server_id,
            self.max_message_bytes,
            f", failing {pending.method}" if pending is not None else "",
        )
        if pending is not None and not pending.future.done():
            limit = self.max_message_bytes
            pending.future.set_exception(
                UpstreamTooLarge(
                    f"server {self.server_id!r} sent a message over the gateway's limit of {limit} bytes",
                    data={"server": self.server_id, "reason": "too_large", "limit": limit},
                )
            )

    def _sole_downstream(self) -> ClientChannel | None:
        """The one downstream with requests in flight, if exactly one: stdio carries no request ids."""
        found: ClientChannel | None = None
        for pending in self._pending.values():
            if pending.downstream is None:
                continue
            if found is not None and pending.downstream is not found:
                return None
            found = pending.downstream
        return found

    async def _relay_request(self, message: Message, target: ClientChannel | None) -> None:
        upstream_id = message["id"]
        try:
            if target is None:
                raise MethodNotFound(
                    f"the gateway has no client to relay {message['method']} to",
                    data={"server": self.server_id},
                )
            response = await target.request(message)
            response["id"] = upstream_id
        except GatewayError as exc:
            response = error_response(upstream_id, exc.to_error())
        try:
            await self.notify(response)
        except GatewayError as exc:  # the upstream went away meanwhile: no one is left to answer
            log.debug("server %s: could not answer its %s: %s", self.server_id, message["method"], exc.message)

    def fail_pending(self, error: GatewayError) -> int:
        """Answer every in-flight request with `error` now (the gateway's drain deadline)."""
        failed = 0
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
                failed += 1
        return failed

    def _mark_closed(self, reason: str, detail: str) -> None:
        """Fail every in-flight request at once: no client waits on a dead upstream."""
        if self.closed and not self._pending:
            return
        first = not self.closed
        self.closed = True
        self.close_reason = self.close_reason or reason
        error_data = {"server": self.server_id, "reason": reason, "detail": detail}
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(
                    UpstreamClosed(f"server {self.server_id!r} closed the connection: {detail}", data=error_data)
                )
        if first and self.handler is not None:
            self.handler.on_closed(self, reason, detail)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        """No task of a session ends with an exception nobody sees."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("server %s: a background task failed", self.server_id, exc_info=exc)
