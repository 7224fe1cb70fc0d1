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
from dataclasses import dataclass
from typing import Any

from gateway import modern
from gateway.errors import (
    HEADER_MISMATCH,
    ClientDeclined,
    ErrorType,
    GatewayError,
    InvalidParams,
    MethodNotFound,
    SessionExpired,
    UpstreamClosed,
    UpstreamInvalid,
    internal_error,
)
from gateway.events import Observer, RequestRecord
from gateway.mrtr import MAX_ROUNDS, StateSealer, is_input_required
from gateway.pool import SessionPool
from gateway.protocol import Message, error_response, result_response
from gateway.runtime import ServerRuntime
from gateway.sessions import DownstreamSession
from gateway.upstream.base import ClientChannel, UpstreamSession

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Call:
    """One client request on its way to one server, over every attempt: where, for whom, and time spent upstream."""

    runtime: ServerRuntime
    session: DownstreamSession
    channel: ClientChannel | None
    upstream_seconds: float | None = None

    def waited(self, seconds: float) -> None:
        self.upstream_seconds = (self.upstream_seconds or 0.0) + seconds


class Forwarder:
    """Sends client requests to servers on pooled sessions, and reports each one's outcome."""

    def __init__(self, pool: SessionPool, observer: Observer, sealer: StateSealer | None = None) -> None:
        self.pool = pool
        self.observer = observer
        self.sealer = sealer or StateSealer()
        self._tools: dict[str, dict[str, modern.ToolMarks]] = {}  # server id -> tool name -> its schema, as listed

    async def forward(
        self, runtime: ServerRuntime, session: DownstreamSession, message: Message, channel: ClientChannel | None
    ) -> Message:
        """Send `message` to `runtime`'s server for `session`; always returns a response, never raises."""
        started = time.perf_counter()
        method = message["method"]
        error_type: ErrorType | None = None
        call = _Call(runtime, session, channel)
        try:
            if runtime.discovered is not None and method in modern.REMOVED:
                return self._removed_upstream(runtime, session, message)
            response = await self._exchange(call, message)
            if method == "tools/call" and runtime.discovered is not None and _header_mismatch(response):
                # The server's tool marks changed since the gateway last listed them: list, then once more.
                await self.forward(runtime, session, {"jsonrpc": "2.0", "id": "relist", "method": "tools/list"}, None)
                response = await self._exchange(call, message)
            if is_input_required(response):
                response = await self._input_required(call, message, response)
            # An object, or absent beside an error: upstream sessions refuse responses of any other shape.
            result: dict[str, Any] = response.get("result") or {}
            if "error" in response:
                error_type = ErrorType.UPSTREAM_ERROR
            elif method == "tools/call" and result.get("isError") is True:
                error_type = ErrorType.TOOL_ERROR
            elif method == "tools/list":
                response = self._usable_tools(runtime, response)
                self._report_tools(runtime, message, response["result"])
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
            self._finished(call, message, started, error_type)

    def _finished(self, call: _Call, message: Message, started: float, error_type: ErrorType | None) -> None:
        """Report one request the server was asked (or was to be asked) for: its outcome and its times."""
        record = RequestRecord(
            server_id=call.runtime.id,
            method=message["method"],
            target=named_target(message),
            duration=time.perf_counter() - started,
            error_type=error_type,
            upstream_duration=call.upstream_seconds,
            protocol_version=call.session.protocol_version,
            upstream_transport=call.runtime.transport,
        )
        self.observer.request_finished(record)

    async def _exchange(self, call: _Call, message: Message) -> Message:
        try:
            return await self._send(call, message)
        except SessionExpired:
            # The upstream forgot the session and did not process the request: once more, on a new one.
            return await self._send(call, message)

    async def _input_required(self, call: _Call, message: Message, response: Message) -> Message:
        """A 2026 server needs input: a 2026 client gets the answer (its state sealed), a 2025 client is asked."""
        runtime, session = call.runtime, call.session
        for _ in range(MAX_ROUNDS):
            result: dict[str, Any] = response["result"]
            relayed = not modern.is_modern_version(session.protocol_version)
            self.observer.input_required(runtime.id, "relayed" if relayed else "passed")
            if not relayed:
                if isinstance(result.get("requestState"), str):
                    sealed = self.sealer.seal(result["requestState"], session.identity, runtime.id, message["method"])
                    response = {**response, "result": {**result, "requestState": sealed}}
                return response
            params = {**(message.get("params") or {}), "inputResponses": await _ask(call.channel, result)}
            if "requestState" in result:
                params["requestState"] = result["requestState"]
            response = await self._exchange(call, {**message, "params": params})
            if not is_input_required(response):
                return response
        raise GatewayError(
            f"server {runtime.id!r} still needed input after {MAX_ROUNDS} rounds",
            data={"server": runtime.id, "reason": "input_rounds"},
        )

    def _removed_upstream(self, runtime: ServerRuntime, session: DownstreamSession, message: Message) -> Message:
        """A 2025 client's request of a method its 2026 server no longer has, answered as that server would mean it."""
        method = message["method"]
        if method == "logging/setLevel":
            level = (message.get("params") or {}).get("level")
            if level not in modern.LEVELS:
                raise InvalidParams(f"Invalid params: level must be one of {', '.join(modern.LEVELS)}")
            session.log_level = level  # sent with each of its requests from now on
        elif method != "ping":
            raise MethodNotFound(
                f"Method not found: server {runtime.id!r} speaks MCP 2026-07-28, which has no {method}",
                data={"method": method, "server": runtime.id},
            )
        return result_response(message["id"], {})

    def _for_upstream(
        self, runtime: ServerRuntime, upstream: UpstreamSession, session: DownstreamSession, message: Message
    ) -> tuple[Message, dict[str, str] | None]:
        """The request as this server's era takes it, and the HTTP headers of a 2026 one."""
        params = message.get("params") or {}
        if "requestState" in params and modern.is_modern_version(session.protocol_version):
            state = self.sealer.open(params["requestState"], session.identity, runtime.id, message["method"])
            message = {**message, "params": {**params, "requestState": state}}
        if not upstream.modern:
            return modern.to_legacy(message), None
        outgoing = modern.with_envelope(message, session.capabilities, session.client_info, session.log_level)
        if not upstream.sends_headers:
            return outgoing, None
        return outgoing, modern.request_headers(outgoing, self.tool(runtime.id, params.get("name")))

    async def _send(self, call: _Call, message: Message) -> Message:
        """One exchange on a pooled session; a session whose transport failed is discarded, not returned."""
        runtime, session = call.runtime, call.session
        pooled = await self.pool.acquire(runtime, session.identity)
        broken = False
        started = time.perf_counter()
        try:
            outgoing, headers = self._for_upstream(runtime, pooled.session, session, message)
            return await pooled.session.request(
                outgoing,
                timeout=runtime.config.request_timeout,
                downstream=call.channel,
                owner=session,
                headers=headers,
            )
        except UpstreamClosed:
            broken = True
            raise
        finally:
            call.waited(time.perf_counter() - started)
            self.pool.release(runtime, pooled, identity=session.identity, failed=broken)

    def _report_tools(self, runtime: ServerRuntime, request: Message, result: dict[str, Any]) -> None:
        tools = result.get("tools")
        if isinstance(tools, list):
            listed = {
                tool["name"]: tool for tool in tools if isinstance(tool, dict) and isinstance(tool.get("name"), str)
            }
            first_page = not (request.get("params") or {}).get("cursor")
            known = self._tools.setdefault(runtime.id, {})
            if first_page:
                known.clear()
            known.update((name, modern.ToolMarks(tool.get("inputSchema"))) for name, tool in listed.items())
            self.observer.tools_listed(runtime.id, list(listed), first_page)

    def _usable_tools(self, runtime: ServerRuntime, response: Message) -> Message:
        """A 2026 HTTP server's tools, less those whose x-mcp-header marks are invalid (a client drops them)."""
        tools = response["result"].get("tools")
        if runtime.discovered is None or not runtime.mirrors_headers or not isinstance(tools, list):
            return response
        kept = [tool for tool in tools if not isinstance(tool, dict) or modern.marks_valid(tool.get("inputSchema"))]
        for tool in tools:
            if tool not in kept:
                log.warning(
                    "server %s: tool %r left out: its x-mcp-header marks are invalid", runtime.id, tool.get("name")
                )
        return response if len(kept) == len(tools) else {**response, "result": {**response["result"], "tools": kept}}

    def tool(self, server_id: str, name: Any) -> modern.ToolMarks | None:
        """What a server last listed for a tool: its schema and marks; None when it listed no such tool."""
        return self._tools.get(server_id, {}).get(name)

    async def discover(self, runtime: ServerRuntime, session: DownstreamSession, message: Message) -> Message:
        """`server/discover` for a 2026 client: the server's own answer, or one made of its 2025 `initialize` answer."""
        started = time.perf_counter()
        error_type: ErrorType | None = None
        try:
            initialized = await self.initialize_result(runtime, session.identity)
            discovered = runtime.discovered
            if discovered is None:  # a 2025 server: what it said at initialize
                return result_response(message["id"], modern.discover_result(initialized))
            capabilities = modern.modern_capabilities(discovered.get("capabilities"))
            return result_response(message["id"], {**discovered, "capabilities": capabilities})
        except GatewayError as exc:
            error_type = exc.error_type
            return error_response(message["id"], exc.to_error())
        finally:
            self._finished(_Call(runtime, session, None), message, started, error_type)

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


def _header_mismatch(response: Message) -> bool:
    error = response.get("error")
    return isinstance(error, dict) and error.get("code") == HEADER_MISMATCH


async def _ask(channel: ClientChannel | None, result: dict[str, Any]) -> dict[str, Any]:
    """Ask a 2025 client, as server-to-client requests on its call's stream, for what a 2026 server needs."""
    wanted = result.get("inputRequests")
    answers: dict[str, Any] = {}
    for key, request in (wanted if isinstance(wanted, dict) else {}).items():
        if channel is None or not isinstance(request, dict) or not isinstance(request.get("method"), str):
            raise UpstreamInvalid(f"an input request the gateway cannot ask a client: {key!r}", data={"key": key})
        params = request.get("params")
        answer = await channel.request(
            {"jsonrpc": "2.0", "id": key, "method": request["method"], "params": params or {}}
        )
        if "error" in answer or not isinstance(answer.get("result"), dict):
            error = answer.get("error") or {}
            raise ClientDeclined(f"the client did not answer {request['method']}: {error.get('message', 'no result')}")
        answers[key] = answer["result"]
    return answers


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

    async def discover(self, session: DownstreamSession, message: Message) -> Message:
        return await self.forwarder.discover(self.runtime, session, message)

    def tool(self, message: Message) -> modern.ToolMarks | None:
        return self.forwarder.tool(self.runtime.id, (message.get("params") or {}).get("name"))

    def server_info(self, response: Message) -> Any:
        return self.runtime.initialize_result.get("serverInfo")

    def may_ask(self) -> bool:
        return self.runtime.discovered is None
