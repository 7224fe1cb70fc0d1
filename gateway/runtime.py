"""One upstream server's life: start, run, stop, crash, restart — its state is written here and only here.

A `ServerRuntime` holds one server's state (`starting / running / stopping / stopped / failed`),
start time, restart count, last exit reason and error, and reports each start and stop to the
observer with its reason. What differs by transport is decided once, by `build_runtime`:

- `StdioRuntime`: the server is a child process, started lazily (or at boot), stopped when idle,
  restarted with exponential backoff when it crashes. Its process is its one MCP session, shared
  by every caller (`single_session`).
- `HttpRuntime`: a remote server, "running" while the gateway can open sessions with it; each
  session is one `Mcp-Session-Id`, and the pool holds as many as its callers need.

The pool and the aggregate call what they need through the base class: open or close a session,
account a request (`request_started` / `request_ended`), note an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any, ClassVar

from gateway.config import HttpServer, StdioServer
from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.events import EvictionReason, Observer, StopReason, stop_for_eviction
from gateway.listen import untagged
from gateway.protocol import Message
from gateway.upstream.base import DEFAULT_MAX_MESSAGE, UpstreamSession
from gateway.upstream.http import HttpClient, HttpSession, make_client
from gateway.upstream.listener import UpstreamListener
from gateway.upstream.stdio import StdioSession

log = logging.getLogger(__name__)

Clock = Callable[[], float]
NotificationSink = Callable[[str, str, Message], None]  # server id, identity ("" = all), message


LISTS = ("tools", "prompts", "resources")  # the capabilities whose listChanged a listen stream carries


class ServerState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class ServerRuntime(ABC):
    """One configured server: its state, and how sessions with it are opened and closed."""

    transport: ClassVar[str]
    single_session: ClassVar[bool]  # one session (a process) carries every caller; its age is the server's
    mirrors_headers: ClassVar[bool]  # its 2026 requests carry marked tool arguments as Mcp-Param-* headers

    def __init__(
        self,
        server_id: str,
        config: StdioServer | HttpServer,
        observer: Observer,
        on_notification: NotificationSink,
        clock: Clock = time.monotonic,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.id = server_id
        self.config = config
        self.observer = observer
        self._on_notification = on_notification
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.state = ServerState.STOPPED
        self.started_at: float | None = None  # wall clock, for display
        self.started_mono: float | None = None
        self.restarts = 0
        self.last_exit_reason: str | None = None
        self.last_error: str | None = None
        self.initialize_result: dict[str, Any] = {}
        self.discovered: dict[str, Any] | None = None  # its server/discover answer this start, if it speaks 2026
        self._listener: UpstreamListener | None = None  # its listen stream, while a 2026 server runs
        self.in_flight = 0
        self.last_used = clock()
        self.stop_listeners: list[Callable[[str, StopReason], None]] = []
        self._stop_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        return None

    @property
    def idle_timeout(self) -> float:
        """Seconds unused after which the server is stopped; 0: never."""
        return 0.0

    def uptime(self) -> float | None:
        if self.state is not ServerState.RUNNING or self.started_mono is None:
            return None
        return self.clock() - self.started_mono

    # -- what the pool and the aggregate call ------------------------------------------------------

    @abstractmethod
    async def open_session(self) -> UpstreamSession:
        """An initialized session with the server, starting it first if need be."""

    @abstractmethod
    async def close_session(self, session: UpstreamSession, reason: EvictionReason) -> None:
        """End a session the pool evicted."""

    async def boot(self) -> None:
        """Start an eager server when the gateway starts."""
        await self.open_session()

    def request_started(self) -> None:
        self.in_flight += 1

    def request_ended(self) -> None:
        self.in_flight -= 1
        self.last_used = self.clock()

    def note_error(self, detail: str) -> None:
        """A failure seen outside a start or a stop (the aggregate could not list the server, say)."""
        self.last_error = detail

    # -- UpstreamHandler -----------------------------------------------------------------------

    def on_notification(self, session: UpstreamSession, message: Message) -> None:
        found = untagged(message)  # a 2026 server's come on its listen stream
        if found is not None:
            self._on_notification(self.id, session.identity, found)

    def on_closed(self, session: UpstreamSession, reason: str, detail: str) -> None:
        if session.initialize_result and not session.modern:  # a session: it lived from initialize until now
            age = time.monotonic() - session.created
            self.observer.session_closed("client", age, session.protocol_version, self.transport)

    # -- starts and stops ------------------------------------------------------------------------

    async def _discover_tools(self, session: UpstreamSession) -> None:
        """Learn the tools a fresh server advertises: metrics label tool names from this list only."""
        if "tools" not in (self.initialize_result.get("capabilities") or {}):
            return
        cursor = None
        try:
            for page in range(100):
                params: dict[str, Any] = {"cursor": cursor} if cursor else {}
                request = {"jsonrpc": "2.0", "id": f"discover-{page}", "method": "tools/list", "params": params}
                response = await session.request(request, timeout=self.config.start_timeout)
                result = response.get("result") or {}
                tools = result.get("tools")
                listed = tools if isinstance(tools, list) else []
                names = [t["name"] for t in listed if isinstance(t, dict) and isinstance(t.get("name"), str)]
                self.observer.tools_listed(self.id, names, page == 0)
                cursor = result.get("nextCursor")
                if not cursor:
                    return
        except GatewayError as exc:
            log.warning("server %s: could not list its tools at start: %s", self.id, exc.message)

    def _start_failed(self, exc: GatewayError) -> None:
        """A start that did not finish: counted as a stop (`start_failed`), so a server that never
        comes up is as visible in `mcp_gateway_server_stops_total` as one that crashes."""
        self.state = ServerState.FAILED
        self.started_mono = None
        self.last_error = exc.message
        self.last_exit_reason = StopReason.START_FAILED
        log.error("server %s failed to start: %s", self.id, exc.message)
        self.observer.server_stopped(self.id, StopReason.START_FAILED)

    def _set_running(self, start_seconds: float) -> None:
        self.state = ServerState.RUNNING
        self.started_at = time.time()
        self.started_mono = self.clock()
        self.last_used = self.clock()
        self.last_error = None
        log.info("server %s running (pid %s, started in %.3fs)", self.id, self.pid, start_seconds)
        self.observer.server_started(self.id, start_seconds)
        capabilities = self.initialize_result.get("capabilities") or {}
        if self.discovered is not None and any((capabilities.get(kind) or {}).get("listChanged") for kind in LISTS):
            self._listener = UpstreamListener(self.id, self.open_session, self.on_notification)
            self._listener.start()

    def _set_stopped(self, reason: StopReason) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        was_running = self.state in (ServerState.RUNNING, ServerState.STOPPING)
        self.state = ServerState.STOPPED
        self.started_mono = None
        if was_running:
            self.observer.server_stopped(self.id, reason)
        for listener in self.stop_listeners:
            listener(self.id, reason)

    async def _cancel_start(self) -> None:  # noqa: B027 - a hook: only a process has a start to cancel
        """A start under way is abandoned when a stop is asked for."""

    def _detach(self) -> UpstreamSession | None:
        """The session that dies with the server (its process), taken off the runtime."""
        return None

    async def stop(self, reason: StopReason) -> None:
        """Stop the server; in-flight requests to it fail with an error naming the reason.

        The stopping runs in a task of its own, so a caller cancelled halfway (the idle sweeper, when
        the gateway shuts down) cannot leave a process half-stopped; a later stop waits for it.
        """
        await self._cancel_start()
        if self._stop_task is not None:
            await asyncio.shield(self._stop_task)
        process = self._detach()
        if self.state is not ServerState.RUNNING and process is None:
            if self.state is ServerState.FAILED and reason is StopReason.MANUAL:
                self.state = ServerState.STOPPED
            return
        self.state = ServerState.STOPPING
        self._stop_task = asyncio.create_task(self._finish_stop(process, reason), name=f"stop-{self.id}")
        await asyncio.shield(self._stop_task)

    async def _finish_stop(self, process: UpstreamSession | None, reason: StopReason) -> None:
        try:
            if process is not None:
                await process.close(reason)
        finally:
            self._stop_task = None
        self.last_exit_reason = reason
        log.info("server %s stopped (%s)", self.id, reason)
        self._set_stopped(reason)

    async def restart(self) -> None:
        await self.stop(StopReason.MANUAL)
        self.restarts += 1

    async def close(self) -> None:
        self._closed = True
        await self.stop(StopReason.SHUTDOWN)

    def _refuse_when_closed(self) -> None:
        if self._closed:
            raise UpstreamUnavailable(f"server {self.id!r} is shutting down", data={"server": self.id})


class StdioRuntime(ServerRuntime):
    """A stdio server: a child process, which is the one session every caller shares."""

    transport = "stdio"
    single_session = True
    mirrors_headers = False  # over stdio, x-mcp-header marks mean nothing
    config: StdioServer

    def __init__(self, server_id: str, config: StdioServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(server_id, config, *args, **kwargs)
        self._process: StdioSession | None = None
        self._starting: asyncio.Task[StdioSession] | None = None
        self._failures: deque[float] = deque()  # start failures and crashes, within the restart window

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and not self._process.closed else None

    @property
    def idle_timeout(self) -> float:
        return self.config.idle_timeout

    async def open_session(self) -> UpstreamSession:
        """The shared process, started if it is not running."""
        self._refuse_when_closed()
        process = self._process
        if process is not None and not process.closed:
            return process
        if self._stop_task is not None:
            # A stop is under way: let it finish (and be counted) before starting again.
            await asyncio.shield(self._stop_task)
            return await self.open_session()
        if self._starting is None:
            self._check_failures()
            self._starting = asyncio.create_task(self._spawn(0.0), name=f"start-{self.id}")
        return await asyncio.shield(self._starting)

    async def close_session(self, session: UpstreamSession, reason: EvictionReason) -> None:
        """The session is the process: stopping it is the server's stop (it starts again on next use)."""
        await self.stop(stop_for_eviction(reason))

    def on_closed(self, session: UpstreamSession, reason: str, detail: str) -> None:
        super().on_closed(session, reason, detail)
        if session is not self._process or self.state is ServerState.STARTING:
            return  # a stop the gateway asked for (it detaches the process first), or a failed start
        # The process went away on its own.
        self._process = None
        self.last_exit_reason = StopReason.CRASH
        self.last_error = detail
        log.warning("server %s crashed: %s", self.id, detail)
        self._set_stopped(StopReason.CRASH)
        if not self._closed:
            self._schedule_restart()

    def _check_failures(self) -> None:
        """Refuse on-demand starts of a server that keeps failing; the window lets it try again later."""
        policy = self.config.restart
        now = self.clock()
        while self._failures and now - self._failures[0] > policy.window:
            self._failures.popleft()
        if len(self._failures) > policy.max_attempts:
            raise UpstreamUnavailable(
                f"server {self.id!r} failed {len(self._failures)} times in {policy.window:g}s; "
                f"last error: {self.last_error}. POST /servers/{self.id}/restart to retry now",
                data={"server": self.id, "reason": "failed", "last_error": self.last_error},
            )

    async def _spawn(self, delay: float) -> StdioSession:
        try:
            if delay:
                await asyncio.sleep(delay)
            self.state = ServerState.STARTING
            started = self.clock()
            process = StdioSession(self.id, self.config, self, max_message_bytes=self.max_message_bytes)
            self._process = process
            try:
                await process.start(self.config.start_timeout)
            except GatewayError as exc:
                self._process = None
                await process.close(StopReason.START_FAILED)
                self._start_failed(exc)
                raise UpstreamUnavailable(
                    f"server {self.id!r} failed to start: {exc.message}",
                    data={"server": self.id, "reason": "start_failed", "detail": exc.message},
                ) from None
            self.initialize_result = process.initialize_result
            self.discovered = process.discover_result if process.modern else None
            await self._discover_tools(process)
            self._set_running(self.clock() - started)
            return process
        finally:
            self._starting = None

    def _start_failed(self, exc: GatewayError) -> None:
        super()._start_failed(exc)
        self._failures.append(self.clock())

    def _schedule_restart(self) -> None:
        policy = self.config.restart
        now = self.clock()
        self._failures.append(now)
        while self._failures and now - self._failures[0] > policy.window:
            self._failures.popleft()
        if not policy.enabled or len(self._failures) > policy.max_attempts:
            self.state = ServerState.FAILED
            log.error("server %s: not restarting (%d failures in %gs)", self.id, len(self._failures), policy.window)
            return
        delay = min(policy.backoff_initial * 2 ** (len(self._failures) - 1), policy.backoff_max)
        log.info("server %s: restarting in %.2fs", self.id, delay)
        self.restarts += 1
        self._starting = asyncio.create_task(self._spawn(delay), name=f"restart-{self.id}")
        self._starting.add_done_callback(_consume)

    async def _cancel_start(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
            self._starting = None

    def _detach(self) -> UpstreamSession | None:
        process, self._process = self._process, None
        return process

    async def restart(self) -> None:
        await super().restart()
        self._failures.clear()
        await self.open_session()


class HttpRuntime(ServerRuntime):
    """A streamable-HTTP server: one connection pool, and as many sessions as the pool asks for."""

    transport = "streamable-http"
    single_session = False
    mirrors_headers = True  # a 2026 request mirrors marked tool arguments in Mcp-Param-* headers
    config: HttpServer

    def __init__(self, server_id: str, config: HttpServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(server_id, config, *args, **kwargs)
        self._http: HttpClient | None = None

    async def open_session(self) -> UpstreamSession:
        """A new session; the first one after a stop (or ever) is the server's start."""
        self._refuse_when_closed()
        if self._http is None:
            self._http = make_client()
        first = self.state is not ServerState.RUNNING
        if first:
            self.state = ServerState.STARTING
        started = self.clock()
        session = HttpSession(self.id, self.config, self._http, self, max_message_bytes=self.max_message_bytes)
        try:
            # A server is probed once per start: later sessions reuse what it answered.
            await session.start(self.config.start_timeout, None if first else self.discovered)
        except GatewayError as exc:
            self._start_failed(exc)
            raise UpstreamUnavailable(
                f"server {self.id!r} is unavailable: {exc.message}", data={"server": self.id, "reason": "connect"}
            ) from None
        self.initialize_result = session.initialize_result
        if first:
            self.discovered = session.discover_result if session.modern else None
            await self._discover_tools(session)
            self._set_running(self.clock() - started)
        return session

    async def close_session(self, session: UpstreamSession, reason: EvictionReason) -> None:
        await session.close(reason)

    async def boot(self) -> None:
        """A probe: it proves the server reachable; callers get pooled sessions of their own."""
        session = await self.open_session()
        await session.close("probe")

    async def close(self) -> None:
        await super().close()
        if self._http is not None:
            await self._http.close()


def build_runtime(
    server_id: str,
    config: StdioServer | HttpServer,
    observer: Observer,
    on_notification: NotificationSink,
    clock: Clock = time.monotonic,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
) -> ServerRuntime:
    """The runtime for a configured server: where the transport is decided, once."""
    kind: type[ServerRuntime] = StdioRuntime if isinstance(config, StdioServer) else HttpRuntime
    return kind(server_id, config, observer, on_notification, clock, max_message_bytes)


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("background start ended: %s", task.exception())
