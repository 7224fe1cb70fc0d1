"""`/mcp`: every configured server presented as one MCP server.

The gateway answers `initialize` and `ping` itself, merges the lists of all servers (tool and
prompt names become `{server_id}__{name}`; resources keep their URIs) and routes each call to its
owner through the `Forwarder`. It reports the requests it answers itself. A server that fails to
start or list is left out and its error logged and shown in `/servers`; one still starting past
`limits.cold_start_wait` is left out of that answer too; the others are listed as usual.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import __version__, modern
from gateway.errors import GatewayError, InvalidParams, MethodNotFound, NotFound, ResourceNotFound
from gateway.events import Observer, Omission, RequestRecord
from gateway.forward import Forwarder
from gateway.protocol import Message, error_response, result_response
from gateway.runtime import ServerRuntime
from gateway.sessions import DownstreamSession
from gateway.upstream.base import ClientChannel

log = logging.getLogger(__name__)

GATEWAY_INFO = {"name": "mcp-gateway", "version": __version__}
SEPARATOR = "__"  # server ids cannot contain "_", so the first "__" splits unambiguously

# list method -> (result key, whether item names are namespaced)
_LISTS = {
    "tools/list": ("tools", True),
    "prompts/list": ("prompts", True),
    "resources/list": ("resources", False),
    "resources/templates/list": ("resourceTemplates", False),
}

_RESOURCE_LISTS = ("resources/list", "resources/templates/list")
_LIST_CHANGED = (
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
)


@dataclass(frozen=True, slots=True)
class AggregateLimits:
    page_size: int  # items per page of the merged lists
    cold_start_wait: float  # seconds an answer waits for a server still starting


class _StillStarting(Exception):
    """A server left out of an aggregated answer because it was still starting (counted where raised)."""


def template_pattern(template: str) -> re.Pattern[str]:
    """A regex for an RFC 6570 template, enough to route a URI to the server that declared it."""
    out, pos = [], 0
    for match in re.finditer(r"\{([+#]?)[^}]*\}", template):
        out.append(re.escape(template[pos : match.start()]))
        out.append(".+" if match.group(1) else "[^/]+")
        pos = match.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out) + "$")


class Aggregator:
    """`/mcp`'s handler: the servers as one, through the forwarder."""

    server_id: str | None = None  # no one server: requests it answers itself are the gateway's
    transport: str | None = None

    def __init__(
        self,
        servers: Mapping[str, ServerRuntime],
        forwarder: Forwarder,
        observer: Observer,
        limits: AggregateLimits,
        announce: Callable[[str, Message], None],
    ) -> None:
        self.servers = servers
        self.forwarder = forwarder
        self.observer = observer
        self.limits = limits
        self._announce = announce  # to one caller's /mcp sessions: (identity, notification)
        self._resources: dict[str, str] = {}  # uri -> server id
        self._templates: list[tuple[re.Pattern[str], str]] = []

    # -- McpHandler --------------------------------------------------------------------------------

    async def initialize(self, session: DownstreamSession, message: Message) -> dict[str, Any]:
        results = await self._each_server(
            session, lambda runtime: self.forwarder.initialize_result(runtime, session.identity)
        )
        return {
            "protocolVersion": session.protocol_version,
            "capabilities": merge_capabilities(results.values()),
            "serverInfo": GATEWAY_INFO,
            "instructions": self._instructions(),
        }

    async def discover(self, session: DownstreamSession, message: Message) -> Message:
        """`server/discover` on /mcp: the gateway's versions, the union of the servers' capabilities."""
        started = time.perf_counter()
        results = await self._each_server(
            session, lambda runtime: self.forwarder.initialize_result(runtime, session.identity)
        )
        discovered = modern.discover_result({"capabilities": merge_capabilities(results.values())})
        discovered["instructions"] = self._instructions()
        self._answered(session, message, started, None)
        return result_response(message["id"], discovered)

    def tool(self, message: Message) -> modern.ToolMarks | None:
        try:
            runtime, params = self.route("tools/call", message.get("params") or {})
        except GatewayError:
            return None  # the call itself says what is wrong with the name
        return self.forwarder.tool(runtime.id, params["name"])

    def server_info(self, response: Message) -> Any:
        return GATEWAY_INFO

    def may_ask(self) -> bool:
        return any(runtime.discovered is None for runtime in self.servers.values())

    def _instructions(self) -> str:
        servers = ", ".join(sorted(self.servers))
        return f"Tools and prompts of these servers, named {{server}}{SEPARATOR}{{name}}: {servers}."

    async def request(self, session: DownstreamSession, message: Message, channel: ClientChannel) -> Message:
        method = message["method"]
        started = time.perf_counter()
        try:
            if method == "ping":
                self._answered(session, message, started, None)
                return result_response(message["id"], {})
            if method in _LISTS:
                result = await self._list(session, method, message)
                self._answered(session, message, started, None)
                return result_response(message["id"], result)
            if method == "logging/setLevel":
                response = await self._broadcast(session, message)
                self._answered(session, message, started, None)
                return response
            try:
                runtime, params = self.route(method, message.get("params") or {})
            except ResourceNotFound:
                # A client may use a URI it already knows without listing first: learn the owners, retry once.
                await self._learn_resources(session)
                runtime, params = self.route(method, message.get("params") or {})
        except GatewayError as exc:
            self._answered(session, message, started, exc.error_type)
            return error_response(message["id"], exc.to_error())
        message["params"] = params
        return await self.forwarder.forward(runtime, session, message, channel)

    def _answered(self, session: DownstreamSession, message: Message, started: float, error: str | None) -> None:
        """Report a request the gateway answered itself, without asking an upstream."""
        record = RequestRecord(
            server_id="",
            method=message["method"],
            target=None,
            duration=time.perf_counter() - started,
            error_type=error,
            upstream_duration=None,
            protocol_version=session.protocol_version,
            upstream_transport=None,
        )
        self.observer.request_finished(record)

    async def notification(self, session: DownstreamSession, message: Message) -> None:
        for runtime in self.servers.values():
            if self.forwarder.has_session(runtime, session.identity):
                await self.forwarder.notify(runtime, session, message)

    # -- routing ---------------------------------------------------------------------------------

    def route(self, method: str, params: dict[str, Any]) -> tuple[ServerRuntime, dict[str, Any]]:
        """Which server owns this call, and the params as that server expects them."""
        if method in ("tools/call", "prompts/get"):
            kind = "tool" if method == "tools/call" else "prompt"
            runtime, name = self._split(params.get("name"), kind)
            return runtime, {**params, "name": name}
        if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            return self._owner_of(params.get("uri")), params
        if method == "completion/complete":
            ref = params.get("ref")
            if not isinstance(ref, dict):
                raise InvalidParams("completion/complete needs ref, an object with type 'ref/prompt' or 'ref/resource'")
            if ref.get("type") == "ref/prompt":
                runtime, name = self._split(ref.get("name"), "prompt")
                return runtime, {**params, "ref": {**ref, "name": name}}
            if ref.get("type") == "ref/resource":
                return self._owner_of(ref.get("uri")), params
            raise InvalidParams("completion/complete needs ref.type 'ref/prompt' or 'ref/resource'")
        raise MethodNotFound(f"Method not found: {method}", data={"method": method})

    def _split(self, name: Any, kind: str) -> tuple[ServerRuntime, str]:
        if not isinstance(name, str):
            raise InvalidParams(f"{kind} name must be a string")
        server_id, sep, original = name.partition(SEPARATOR)
        runtime = self.servers.get(server_id)
        if not sep or runtime is None or not original:
            raise NotFound(
                f"unknown {kind} {name!r}: {kind}s are named {{server}}{SEPARATOR}{{name}}",
                data={kind: name, "servers": sorted(self.servers)},
            )
        return runtime, original

    def _owner_of(self, uri: Any) -> ServerRuntime:
        if not isinstance(uri, str):
            raise InvalidParams("uri must be a string")
        server_id = self._resources.get(uri)
        if server_id is None:
            server_id = next((sid for pattern, sid in self._templates if pattern.match(uri)), None)
        if server_id is None:
            raise ResourceNotFound(f"no server offers resource {uri!r}", data={"uri": uri})
        return self.servers[server_id]

    # -- fan-out ---------------------------------------------------------------------------------

    async def _each_server(self, session: DownstreamSession, call: Any) -> dict[str, Any]:
        """Run `call(runtime)` on every server at once; failures are logged and left out.

        A server with no session for this caller yet (a lazy start, a restart, a new HTTP session)
        gets `limits.cold_start_wait` seconds to provide one. Past that it is left out of this answer
        and keeps starting; once it is up, the caller's /mcp sessions are told the lists changed.
        """
        runtimes = list(self.servers.values())
        results = await asyncio.gather(
            *(self._when_ready(runtime, session, call) for runtime in runtimes), return_exceptions=True
        )
        out = {}
        for runtime, result in zip(runtimes, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                if isinstance(result, _StillStarting):
                    continue
                runtime.note_error(str(result))
                self.observer.omitted(runtime.id, Omission.FAILED)
                log.warning("server %s left out of the aggregate: %s", runtime.id, result)
            else:
                out[runtime.id] = result
        return out

    async def _when_ready(self, runtime: ServerRuntime, session: DownstreamSession, call: Any) -> Any:
        """`call(runtime)`; bounded by `limits.cold_start_wait` when it must start a session first."""
        if self.forwarder.has_session(runtime, session.identity):
            return await call(runtime)
        starting = asyncio.ensure_future(call(runtime))  # it opens the session (and starts the server)
        done, _ = await asyncio.wait({starting}, timeout=self.limits.cold_start_wait)
        if done:
            return starting.result()
        self.observer.omitted(runtime.id, Omission.STARTING)
        log.info("server %s is still starting: left out of this answer; it keeps starting", runtime.id)
        starting.add_done_callback(lambda task: self._started_late(runtime, session.identity, task))
        raise _StillStarting

    def _started_late(self, runtime: ServerRuntime, identity: str, task: asyncio.Future[Any]) -> None:
        """A server left out while it started is up: the caller's lists are now longer."""
        if task.cancelled() or task.exception() is not None:
            return  # its failure is counted and shown where the start failed
        for method in _LIST_CHANGED:
            self._announce(identity, {"jsonrpc": "2.0", "method": method})

    async def _fetch_all(self, runtime: ServerRuntime, session: DownstreamSession, method: str) -> list[dict[str, Any]]:
        """Every item of one server's list, following its cursors."""
        key = _LISTS[method][0]
        items: list[dict[str, Any]] = []
        cursor = None
        for page in range(1000):
            params: dict[str, Any] = {"cursor": cursor} if cursor else {}
            request = {"jsonrpc": "2.0", "id": f"list-{page}", "method": method, "params": params}
            response = await self.forwarder.forward(runtime, session, request, None)
            if "error" in response:
                error = response["error"]
                if error.get("code") == -32601:
                    return []  # the server does not offer this list
                raise GatewayError(f"{method} failed: {error.get('message')}")
            result = response["result"]  # an object: upstream sessions refuse responses of any other shape
            listed = result.get(key)
            items.extend(item for item in (listed if isinstance(listed, list) else ()) if isinstance(item, dict))
            cursor = result.get("nextCursor")
            if not cursor:
                break
        return items

    async def _list(self, session: DownstreamSession, method: str, message: Message) -> dict[str, Any]:
        key, namespaced = _LISTS[method]
        per_server = await self._each_server(session, lambda runtime: self._fetch_all(runtime, session, method))
        merged: list[dict[str, Any]] = []
        for server_id in self.servers:
            for item in per_server.get(server_id, []):
                if namespaced:
                    item = {**item, "name": f"{server_id}{SEPARATOR}{item.get('name')}"}
                elif method == "resources/list":
                    self._resources[str(item.get("uri"))] = server_id
                else:
                    pattern = template_pattern(str(item.get("uriTemplate")))
                    if all(p.pattern != pattern.pattern or s != server_id for p, s in self._templates):
                        self._templates.append((pattern, server_id))
                merged.append(item)
        offset = decode_cursor((message.get("params") or {}).get("cursor"))
        size = self.limits.page_size
        result: dict[str, Any] = {key: merged[offset : offset + size]}
        if offset + size < len(merged):
            result["nextCursor"] = encode_cursor(offset + size)
        return result

    async def _learn_resources(self, session: DownstreamSession) -> None:
        await asyncio.gather(*(self._list(session, method, {}) for method in _RESOURCE_LISTS))

    async def _broadcast(self, session: DownstreamSession, message: Message) -> Message:
        async def one(runtime: ServerRuntime) -> None:
            caps = runtime.initialize_result.get("capabilities") or {}
            if "logging" in caps:
                await self.forwarder.forward(runtime, session, {**message}, None)

        await self._each_server(session, one)
        return result_response(message["id"], {})


def merge_capabilities(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The capabilities /mcp offers: lists that may change, and what any server offers beyond them.

    Extensions and experimental features are kept, merged by name (the first server's settings win).
    """
    capabilities: dict[str, Any] = {}
    for result in results:
        offered = result.get("capabilities")
        for name, value in (offered if isinstance(offered, dict) else {}).items():
            if name in ("tools", "prompts", "resources"):
                merged = capabilities.setdefault(name, {})
                merged["listChanged"] = True
                if name == "resources" and isinstance(value, dict) and value.get("subscribe"):
                    merged["subscribe"] = True
            elif name in ("logging", "completions"):
                capabilities[name] = {}
            elif name in ("extensions", "experimental") and isinstance(value, dict):
                for key, settings in value.items():
                    capabilities.setdefault(name, {}).setdefault(key, settings)
    for name in ("tools", "prompts", "resources"):
        capabilities.setdefault(name, {"listChanged": True})
    return capabilities


def encode_cursor(offset: int) -> str:
    """An opaque cursor for the merged lists: where the next page starts."""
    return base64.urlsafe_b64encode(orjson.dumps({"o": offset})).decode()


def decode_cursor(cursor: Any) -> int:
    if cursor is None:
        return 0
    try:
        offset = orjson.loads(base64.urlsafe_b64decode(str(cursor).encode()))["o"]
        if isinstance(offset, int) and offset >= 0:
            return offset
    except (ValueError, KeyError, TypeError):
        pass
    raise InvalidParams(f"invalid cursor {cursor!r}")
