"""Forwarding one client request to one upstream server, and the per-server endpoint.

`forward` is the single point where a proxied request begins and ends: it takes a pooled session,
sends the request, classifies the outcome and reports it to the observer. `ServerProxy` answers
`/servers/{server_id}/mcp`: the upstream's own initialize result, everything else verbatim.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.errors import ErrorType, GatewayError, SessionExpired, UpstreamClosed, internal_error
from gateway.events import RequestRecord
from gateway.lifecycle import ServerRuntime
from gateway.protocol import Message, error_response
from gateway.sessions import ClientSession
from gateway.upstream.base import Downstream

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)


async def forward(
    gateway: Gateway,
    runtime: ServerRuntime,
    session: ClientSession,
    message: Message,
    channel: Downstream | None,
    target: str | None = None,
) -> Message:
    """Send `message` to `runtime`'s server for `session`; always returns a response, never raises.

    `target` is the tool or prompt the request names, as the upstream knows it.
    """
    started = time.perf_counter()
    request_id = message["id"]
    method = message["method"]
    error_type: ErrorType | None = None
    upstream_spent: list[float] = []  # per attempt, from the session in hand to the answer
    try:
        try:
            response = await _send(gateway, runtime, session, message, channel, upstream_spent)
        except SessionExpired:
            # The upstream forgot the session and did not process the request: once more, on a new one.
            response = await _send(gateway, runtime, session, message, channel, upstream_spent)
        # An object, or absent beside an error: upstream sessions refuse responses of any other shape.
        result: dict[str, Any] = response.get("result") or {}
        if "error" in response:
            error_type = ErrorType.UPSTREAM_ERROR
        elif method == "tools/call" and result.get("isError") is True:
            error_type = ErrorType.TOOL_ERROR
        elif method == "tools/list":
            _report_tools(gateway, runtime, message, result)
        return response
    except GatewayError as exc:
        error_type = exc.error_type
        return error_response(request_id, exc.to_error())
    except Exception:  # a bug: the client still gets an answer, and the log the traceback
        log.exception("forwarding %s to server %s failed", method, runtime.id)
        error_type = ErrorType.INTERNAL
        return error_response(request_id, internal_error(runtime.id))
    finally:
        upstream_seconds = sum(upstream_spent) if upstream_spent else None
        gateway.observer.request_finished(
            RequestRecord(
                runtime.id,
                method,
                target,
                time.perf_counter() - started,
                error_type,
                upstream_seconds,
                session.protocol_version,
                runtime.transport,
            )
        )


async def _send(
    gateway: Gateway,
    runtime: ServerRuntime,
    session: ClientSession,
    message: Message,
    channel: Downstream | None,
    spent: list[float],
) -> Message:
    """One exchange on a pooled session, its time appended to `spent`; a session whose transport
    failed is discarded, not returned."""
    lease = await gateway.pool.acquire(runtime, session.identity)
    started = time.perf_counter()
    broken = False
    try:
        return await lease.session.request(
            message, timeout=runtime.config.request_timeout, downstream=channel, owner=session
        )
    except UpstreamClosed:
        broken = True
        raise
    finally:
        spent.append(time.perf_counter() - started)
        gateway.pool.release(runtime, lease, identity=session.identity, failed=broken)


def _report_tools(gateway: Gateway, runtime: ServerRuntime, request: Message, result: dict[str, Any]) -> None:
    tools = result.get("tools")
    if isinstance(tools, list):
        names = [tool["name"] for tool in tools if isinstance(tool, dict) and isinstance(tool.get("name"), str)]
        first_page = not (request.get("params") or {}).get("cursor")
        gateway.observer.tools_listed(runtime.id, names, first_page)


def named_target(message: Message) -> str | None:
    """The tool or prompt a request names, if any."""
    if message["method"] in ("tools/call", "prompts/get"):
        name = (message.get("params") or {}).get("name")
        return name if isinstance(name, str) else None
    return None


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
    # Only sessions that exist can have state to update: a notification never opens (or waits for)
    # one, and a failure has no one to be reported to.
    for upstream in gateway.pool.live_sessions(runtime.id, session.identity):
        with contextlib.suppress(GatewayError):
            await upstream.notify(message)


class ServerProxy:
    """`/servers/{server_id}/mcp`: one upstream, passed through."""

    def __init__(self, gateway: Gateway, runtime: ServerRuntime) -> None:
        self.gateway = gateway
        self.runtime = runtime

    async def initialize(self, session: ClientSession, message: Message) -> dict[str, Any]:
        lease = await self.gateway.pool.acquire(self.runtime, session.identity)
        self.gateway.pool.release(self.runtime, lease, identity=session.identity)
        return dict(lease.session.initialize_result)

    async def request(self, session: ClientSession, message: Message, channel: Downstream) -> Message:
        return await forward(self.gateway, self.runtime, session, message, channel, named_target(message))

    async def notification(self, session: ClientSession, message: Message) -> None:
        await forward_notification(self.gateway, self.runtime, session, message)
