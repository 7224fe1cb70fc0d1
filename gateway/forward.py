"""Forwarding one client request to one upstream server, and the per-server endpoint.

`Forwarder` is where every proxied request begins and ends: it takes a pooled session, sends the
request, classifies the outcome and reports it to the observer. `ServerProxy` answers
`/servers/{server_id}/mcp`: the upstream's own initialize result, everything else verbatim. The
requests `/mcp` answers itself (`initialize`, `ping`, the merged lists) are reported by the
aggregate (`gateway/aggregate.py`), and `initialize` on either endpoint by the transport.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from gateway.errors import ErrorType, GatewayError, SessionExpired, UpstreamClosed, internal_error
from gateway.events import Observer, RequestRecord
from gateway.pool import SessionPool
from gateway.protocol import Message, error_response
from gateway.runtime import ServerRuntime
from gateway.sessions import DownstreamSession
from gateway.upstream.base import ClientChannel

log = logging.getLogger(__name__)


class _Upstream:
    """Time spent waiting on the upstream, over every attempt of one request."""

    seconds: float | None = None

    def add(self, seconds: float) -> None:
        self.seconds = (self.seconds or 0.0) + seconds


class Forwarder:
    """Sends client requests to servers on pooled sessions, and reports each one's outcome."""

    def __init__(self, pool: SessionPool, observer: Observer) -> None:
        self.pool = pool
        self.observer = observer

    async def forward(
        self, runtime: ServerRuntime, session: DownstreamSession, message: Message, channel: ClientChannel | None
    ) -> Message:
        """Send `message` to `runtime`'s server for `session`; always returns a response, never raises."""
        started = time.perf_counter()
        method = message["method"]
        error_type: ErrorType | None = None
        upstream = _Upstream()
        try:
            try:
                response = await self._send(runtime, session, message, channel, upstream)
            except SessionExpired:
                # The upstream forgot the session and did not process the request: once more, on a new one.
                response = await self._send(runtime, session, message, channel, upstream)
            # An object, or absent beside an error: upstream sessions refuse responses of any other shape.
            result: dict[str, Any] = response.get("result") or {}
            if "error" in response:
                error_type = ErrorType.UPSTREAM_ERROR
            elif method == "tools/call" and result.get("isError") is True:
                error_type = ErrorType.TOOL_ERROR
            elif method == "tools/list":
                self._report_tools(runtime, message, result)
            return response
        except GatewayError as exc:
            error_type = exc.error_type
            if exc.rejection is not None:
                self.observer.rejected(runtime.id, exc.rejection)
            return error_response(message["id"], exc.to_error())
        except Exception:  # a bug: the client still gets an answer, and the log the traceback
            log.exception("forwarding %s to server %s failed", method, runtime.id)
            error_type = ErrorType.INTERNAL
            return error_response(message["id"], internal_error(runtime.id))
        finally:
            record = RequestRecord(
                server_id=runtime.id,
                method=method,
                target=named_target(message),
                duration=time.perf_counter() - started,
                error_type=error_type,
                upstream_duration=upstream.seconds,
                protocol_version=session.protocol_version,
                upstream_transport=runtime.transport,
            )
            self.observer.request_finished(record)

    async def _send(
        self,
        runtime: ServerRuntime,
        session: DownstreamSession,
        message: Message,
        channel: ClientChannel | None,
        upstream: _Upstream,
    ) -> Message:
        """One exchange on a pooled session; a session whose transport failed is discarded, not returned."""
        pooled = await self.pool.acquire(runtime, session.identity)
        broken = False
        started = time.perf_counter()
        try:
            return await pooled.session.request(
                message, timeout=runtime.config.request_timeout, downstream=channel, owner=session
            )
        except UpstreamClosed:
            broken = True
            raise
        finally:
            upstream.add(time.perf_counter() - started)
            self.pool.release(runtime, pooled, identity=session.identity, failed=broken)

    def _report_tools(self, runtime: ServerRuntime, request: Message, result: dict[str, Any]) -> None:
        tools = result.get("tools")
        if isinstance(tools, list):
            names = [tool["name"] for tool in tools if isinstance(tool, dict) and isinstance(tool.get("name"), str)]
            first_page = not (request.get("params") or {}).get("cursor")
            self.observer.tools_listed(runtime.id, names, first_page)

    async def notify(self, runtime: ServerRuntime, session: DownstreamSession, message: Message) -> None:
        """Relay a client notification; `notifications/cancelled` is matched to its in-flight request."""
        method = message["method"]
        if method == "notifications/initialized":
            return  # the gateway initialized the upstream session itself
        upstreams = self.pool.live_sessions(runtime.id, session.identity)
        if method == "notifications/cancelled":
            params = message.get("params") or {}
            for upstream in upstreams:
                if upstream.cancel(params.get("requestId"), session, params.get("reason")):
                    return
            return
        # Only sessions that exist can have state to update: a notification never opens (or waits for)
        # one, and a failure has no one to be reported to.
        for upstream in upstreams:
            with contextlib.suppress(GatewayError):
                await upstream.notify(message)

    def has_session(self, runtime: ServerRuntime, identity: str) -> bool:
        """Whether this caller has a live session with the server (no start or handshake needed)."""
        return bool(self.pool.live_sessions(runtime.id, identity))

    async def initialize_result(self, runtime: ServerRuntime, identity: str) -> dict[str, Any]:
        """What the server answered `initialize` with, on a session this caller may use (opened if need be)."""
        pooled = await self.pool.acquire(runtime, identity)
        self.pool.release(runtime, pooled, identity=identity)
        return pooled.session.initialize_result


def named_target(message: Message) -> str | None:
    """The tool or prompt a request names, if any."""
    if message["method"] in ("tools/call", "prompts/get"):
        name = (message.get("params") or {}).get("name")
        return name if isinstance(name, str) else None
    return None


class ServerProxy:
    """`/servers/{server_id}/mcp`: one upstream, passed through."""

    def __init__(self, runtime: ServerRuntime, forwarder: Forwarder) -> None:
        self.runtime = runtime
        self.forwarder = forwarder
        self.server_id: str | None = runtime.id
        self.transport: str | None = runtime.transport

    async def initialize(self, session: DownstreamSession, message: Message) -> dict[str, Any]:
        return dict(await self.forwarder.initialize_result(self.runtime, session.identity))

    async def request(self, session: DownstreamSession, message: Message, channel: ClientChannel) -> Message:
        return await self.forwarder.forward(self.runtime, session, message, channel)

    async def notification(self, session: DownstreamSession, message: Message) -> None:
        await self.forwarder.notify(self.runtime, session, message)
