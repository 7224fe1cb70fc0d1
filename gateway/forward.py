"""Forwarding one client request to one upstream server, and the per-server endpoint.

`forward` is the single point where a proxied request begins and ends: it takes a pooled session,
sends the request, classifies the outcome and reports it to the observer. `ServerProxy` answers
`/servers/{server_id}/mcp`: the upstream's own initialize result, everything else verbatim.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.errors import ErrorType, GatewayError
from gateway.lifecycle import ServerRuntime
from gateway.protocol import Message, error_response
from gateway.sessions import ClientSession
from gateway.upstream.base import Downstream

if TYPE_CHECKING:
    from gateway.app import Gateway


async def forward(
    gateway: Gateway,
    runtime: ServerRuntime,
    session: ClientSession,
    message: Message,
    channel: Downstream | None,
    tool: str | None = None,
) -> Message:
    """Send `message` to `runtime`'s server for `session`; always returns a response, never raises."""
    started = time.perf_counter()
    request_id = message["id"]
    method = message["method"]
    error_type: ErrorType | None = None
    try:
        upstream = await gateway.pool.acquire(runtime, session.identity)
        try:
            response = await upstream.request(
                message, timeout=runtime.config.request_timeout, downstream=channel, owner=session
            )
        finally:
            gateway.pool.release(runtime, upstream)
        if "error" in response:
            error_type = ErrorType.UPSTREAM_ERROR
        elif tool is not None and (response.get("result") or {}).get("isError") is True:
            error_type = ErrorType.TOOL_ERROR
        return response
    except GatewayError as exc:
        error_type = exc.error_type
        return error_response(request_id, exc.to_error())
    finally:
        gateway.observer.request_finished(runtime.id, method, tool, time.perf_counter() - started, error_type)


async def forward_notification(
    gateway: Gateway, runtime: ServerRuntime, session: ClientSession, message: Message
) -> None:
    """Relay a client notification; `notifications/cancelled` is matched to its in-flight request."""
    method = message["method"]
    if method == "notifications/initialized":
        return  # the gateway initialized the upstream session itself
    if method == "notifications/cancelled":
        params = message.get("params") or {}
        for upstream in gateway.pool.live_sessions(runtime.id, session.identity):
            if upstream.cancel(params.get("requestId"), session, params.get("reason")):
                return
        return
    if not gateway.pool.live_sessions(runtime.id, session.identity):
        return  # nothing upstream to tell
    upstream = await gateway.pool.acquire(runtime, session.identity)
    try:
        await upstream.notify(message)
    except GatewayError:
        pass  # a notification has no one to report a failure to
    finally:
        gateway.pool.release(runtime, upstream)


class ServerProxy:
    """`/servers/{server_id}/mcp`: one upstream, passed through."""

    def __init__(self, gateway: Gateway, runtime: ServerRuntime) -> None:
        self.gateway = gateway
        self.runtime = runtime

    async def initialize(self, session: ClientSession, message: Message) -> dict[str, Any]:
        upstream = await self.gateway.pool.acquire(self.runtime, session.identity)
        self.gateway.pool.release(self.runtime, upstream)
        return dict(upstream.initialize_result)

    async def request(self, session: ClientSession, message: Message, channel: Downstream) -> Message:
        tool = None
        if message["method"] == "tools/call":
            name = (message.get("params") or {}).get("name")
            tool = name if isinstance(name, str) else None
        return await forward(self.gateway, self.runtime, session, message, channel, tool)

    async def notification(self, session: ClientSession, message: Message) -> None:
        await forward_notification(self.gateway, self.runtime, session, message)
