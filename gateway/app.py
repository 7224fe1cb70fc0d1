"""The Starlette application: routes, the `Gateway` that builds the parts and owns their lifespan.

Request path: `guard.Guard` (Host, Origin) -> `transport.McpEndpoint` (HTTP, sessions, errors) ->
`aggregate.Aggregator` or `forward.ServerProxy` (routing) -> `forward.Forwarder` -> `pool.SessionPool`
(an upstream session) -> `upstream.*` (the wire) -> back. Each part is given what it uses; none
looks things up in the `Gateway`, and none imports this module. Operations routes (`/healthz`,
`/readyz`, `/servers`, admin) live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway.aggregate import AggregateLimits, Aggregator
from gateway.auth import Auth
from gateway.config import Config, GatewaySettings
from gateway.errors import GatewayError, ShuttingDown
from gateway.events import EvictionReason, NullObserver, Observer, Rejection, StopReason, eviction_for_stop
from gateway.forward import Forwarder, ServerProxy
from gateway.guard import Guard
from gateway.holds import Holds
from gateway.lifecycle import Lifecycle
from gateway.listen import Listeners
from gateway.mrtr import StateSealer
from gateway.observability import GatewayFleet, Telemetry
from gateway.pool import SessionPool
from gateway.protocol import Message
from gateway.responses import HttpError, Scope
from gateway.runtime import ServerRuntime, ServerState
from gateway.sessions import DownstreamSession, SessionLimits, SessionStore
from gateway.transport import Edge, McpEndpoint, McpHandler, Readiness

log = logging.getLogger(__name__)

_DEADLINE_MARGIN = 0.25  # seconds before the drain timeout at which in-flight requests are answered


class Gateway:
    """Everything one gateway process holds: config, servers, pool, client sessions, observer."""

    def __init__(self, config: Config, observer: Observer | None = None) -> None:
        self.config = config
        self.settings = config.gateway
        self.observer: Observer = observer or NullObserver()
        self.lifecycle = Lifecycle(config, self.observer, self._upstream_notification)
        self.pool = SessionPool(self.observer, identities=self.settings.auth.identities)
        for runtime in self.lifecycle.servers.values():
            self.pool.add(runtime)
        limits = self.settings.limits
        self.sessions = SessionStore(
            SessionLimits(
                limits.max_sessions,
                self.settings.sessions_per_identity(),
                limits.session_idle_timeout,
                limits.max_stream_buffer_bytes,
            ),
            self._session_ended,
            self._stream_overflowed,
        )
        self.auth = Auth(self.settings.auth.tokens)
        self.readiness = Readiness()
        self.listeners = Listeners()
        state_key = self.settings.state_key
        sealer = StateSealer(state_key.encode() if state_key else None)
        self.holds = Holds(sealer, limits.max_held_calls, limits.input_hold_seconds, self.observer.holding)
        self.edge = Edge(
            self.auth, self.sessions, self.listeners, self.holds, self.observer, self.readiness, limits.max_body_bytes
        )
        self.forwarder = Forwarder(self.pool, self.observer, sealer)
        self.aggregator = Aggregator(
            self.lifecycle.servers,
            self.forwarder,
            self.observer,
            AggregateLimits(limits.page_size, limits.cold_start_wait),
            self._announce,
        )
        self._proxies = {sid: ServerProxy(runtime, self.forwarder) for sid, runtime in self.lifecycle.servers.items()}
        self.loop: asyncio.AbstractEventLoop | None = None  # the one it runs on, once started
        self._sweeper: asyncio.Task[None] | None = None
        self._pool_sweeper: asyncio.Task[None] | None = None

    def _session_ended(self, session: DownstreamSession) -> None:
        age = time.monotonic() - session.created
        self.observer.session_closed("server", age, session.protocol_version, None)

    def _stream_overflowed(self, session: DownstreamSession) -> None:
        self.observer.rejected(session.scope, Rejection.STREAM_OVERFLOW)

    def aggregate(self, scope: Scope) -> McpHandler:
        return self.aggregator

    def proxy(self, scope: Scope) -> McpHandler:
        """The handler of `/servers/{server_id}/mcp`; 404 naming the known servers for another id."""
        server_id = scope["path_params"]["server_id"]
        proxy = self._proxies.get(server_id)
        if proxy is None:
            raise HttpError(404, f"unknown server {server_id!r}", {"known": sorted(self._proxies)})
        return proxy

    def runtime(self, server_id: str) -> ServerRuntime:
        runtime = self.lifecycle.servers.get(server_id)
        if runtime is None:
            raise HttpError(404, f"unknown server {server_id!r}", {"known": sorted(self.lifecycle.servers)})
        return runtime

    def _upstream_notification(self, server_id: str, identity: str, message: Message) -> None:
        """Re-announce what an upstream says to no request in particular (list_changed, logs, updates)."""
        for session in self.sessions:
            if session.scope in (server_id, None) and (not identity or session.identity == identity):
                session.notify(message)
        self.listeners.deliver((server_id, None), identity, message)

    def _announce(self, identity: str, message: Message) -> None:
        """Tell one caller's /mcp sessions something the aggregate itself says (its lists changed)."""
        for session in self.sessions:
            if session.scope is None and session.identity == identity:
                session.notify(message)
        self.listeners.deliver((None,), identity, message)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.lifecycle.startup()
        self._sweeper = asyncio.create_task(self._expire_sessions(), name="session-expiry")
        self._pool_sweeper = asyncio.create_task(self.pool.run_sweeper(), name="pool-sweeper")
        self.readiness.ready = True

    async def _expire_sessions(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.settings.limits.session_idle_timeout / 2))
            if expired := self.sessions.expire():
                log.info("forgot %d idle client sessions", expired)

    def begin_drain(self) -> None:
        """Shutdown has begun: not ready, refuse new work, end the long-lived GET streams."""
        if self.readiness.draining:
            return
        log.info("draining: refusing new requests")
        self.readiness.ready = False
        self.readiness.draining = True
        for session in self.sessions:
            if session.stream is not None:
                session.close()
        self.listeners.close_all()
        self.holds.close()
        # Just before uvicorn's own drain timeout cuts connections, answer what is still in flight.
        deadline = max(0.0, self.settings.limits.drain_timeout - _DEADLINE_MARGIN)
        with contextlib.suppress(RuntimeError):  # no running loop: nothing can be in flight
            asyncio.get_running_loop().call_later(deadline, self._fail_in_flight)

    def _fail_in_flight(self) -> None:
        error = ShuttingDown("the gateway shut down before the server answered", data={"reason": "shutdown"})
        failed = sum(session.fail_pending(error) for session in self.pool.all_sessions())
        if failed:
            log.warning("drain timeout: answered %d in-flight requests with a shutdown error", failed)

    async def stop(self) -> None:
        self.begin_drain()
        for task in (self._sweeper, self._pool_sweeper):
            if task is not None:
                task.cancel()
        await self.pool.close()
        await self.lifecycle.shutdown()
        self.sessions.close_all()

    async def stop_server(self, runtime: ServerRuntime, reason: StopReason) -> None:
        await self.pool.evict_server(runtime.id, eviction_for_stop(reason))
        await runtime.stop(reason)

    async def restart_server(self, runtime: ServerRuntime) -> None:
        await self.pool.evict_server(runtime.id, EvictionReason.MANUAL)
        await runtime.restart()


class _Operations:
    """The operations routes: health, readiness, the servers, and the admin actions."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/servers", self.servers),
            Route("/servers/{server_id}/restart", self.admin, methods=["POST"]),
            Route("/servers/{server_id}/stop", self.admin, methods=["POST"]),
            Route("/servers/{server_id}/sessions", self.sessions, methods=["GET", "DELETE"]),
        ]

    def _authorize(self, request: Request) -> None:
        gateway = self.gateway
        try:
            gateway.auth.identity({k.encode("latin-1"): v.encode("latin-1") for k, v in request.headers.items()})
        except HttpError as exc:
            if exc.rejection is not None:
                gateway.observer.rejected(None, exc.rejection)
            raise

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        readiness = self.gateway.readiness
        if readiness.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "draining" if readiness.draining else "starting"}, status_code=503)

    async def servers(self, request: Request) -> Response:
        self._authorize(request)
        gateway = self.gateway
        described = [
            {**describe(runtime), "pool": gateway.pool.describe(runtime.id)}
            for runtime in gateway.lifecycle.servers.values()
        ]
        return JSONResponse({"gateway_id": gateway.settings.id, "servers": described})

    async def admin(self, request: Request) -> Response:
        """POST /servers/{id}/restart or /stop (reason manual)."""
        self._authorize(request)
        runtime = self.gateway.runtime(request.path_params["server_id"])
        try:
            if request.url.path.endswith("/restart"):
                await self.gateway.restart_server(runtime)
            else:
                await self.gateway.stop_server(runtime, StopReason.MANUAL)
        except GatewayError as exc:
            return JSONResponse({"error": exc.message, "server": describe(runtime)}, status_code=502)
        return JSONResponse(describe(runtime))

    async def sessions(self, request: Request) -> Response:
        """GET: the server's pooled sessions and breaker; DELETE: evict them all (reason manual)."""
        self._authorize(request)
        pool = self.gateway.pool
        runtime = self.gateway.runtime(request.path_params["server_id"])
        if request.method == "DELETE":
            evicted = await pool.evict_server(runtime.id, EvictionReason.MANUAL)
            return JSONResponse({"evicted": evicted, **pool.describe(runtime.id)})
        return JSONResponse(pool.describe(runtime.id))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    headers = {k.decode(): v.decode() for k, v in exc.headers}
    return JSONResponse(exc.body, status_code=exc.status, headers=headers)


def create_app(gateway: Gateway, telemetry: Telemetry | None = None) -> ASGIApp:
    """The gateway's ASGI app; with `telemetry`, also `/metrics` and HTTP server metrics."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()
            if telemetry is not None:
                telemetry.shutdown()

    mcp = ["GET", "POST", "DELETE"]
    routes = [
        Route("/mcp", McpEndpoint(gateway.edge, gateway.aggregate), methods=mcp),
        Route("/servers/{server_id}/mcp", McpEndpoint(gateway.edge, gateway.proxy), methods=mcp),
        *_Operations(gateway).routes(),
    ]
    if telemetry is not None:
        telemetry.watch(GatewayFleet(gateway.lifecycle.servers, gateway.pool, lambda: gateway.loop))
        routes.append(Route("/metrics", telemetry.metrics))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HttpError: _on_http_error})
    guarded = guard(app, gateway.settings, gateway.observer)
    return telemetry.instrument_http(guarded, routes) if telemetry is not None else guarded


def guard(app: ASGIApp, settings: GatewaySettings, observer: Observer) -> ASGIApp:
    """`app` behind the Host, Origin and cross-site checks (gateway/guard.py)."""
    return Guard(app, settings.effective_allowed_hosts(), settings.allowed_origins, observer)


def describe(runtime: ServerRuntime) -> dict[str, Any]:
    """One server as `/servers` shows it."""
    info = runtime.initialize_result.get("serverInfo") or {}
    uptime = runtime.uptime()
    return {
        "id": runtime.id,
        "transport": runtime.transport,
        "state": runtime.state,
        "pid": runtime.pid,
        "started_at": runtime.started_at if runtime.state is ServerState.RUNNING else None,
        "uptime_seconds": round(uptime, 3) if uptime is not None else None,
        "restarts": runtime.restarts,
        "in_flight": runtime.in_flight,
        "last_exit_reason": runtime.last_exit_reason,
        "last_error": runtime.last_error,
        "server_info": info or None,
        "protocol_version": runtime.initialize_result.get("protocolVersion"),  # what the gateway speaks with it
    }
