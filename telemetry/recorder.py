"""Records what the gateway observes into the instruments the catalog declares.

The gateway calls `Recorder`'s methods at its observation points (see `gateway.events`). Counters are
plain dict increments read by observable callbacks at collection time, and histograms are cached-
attribute SDK records, so a request costs a few microseconds of telemetry. Gauges come from a
`Fleet` view read at collection. Every label value is bounded by construction; a per-instrument
cardinality limit folds whatever would exceed it into "other". Failures are logged, never raised.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psutil
from opentelemetry.metrics import Histogram, Meter, Observation

from telemetry.catalog import (
    BY_NAME,
    ERROR_TYPES,
    EVICTION_REASONS,
    GATEWAY_SERVER,
    INPUT_BRIDGES,
    MCP_METHODS,
    OMISSION_REASONS,
    OTHER,
    REJECTION_REASONS,
    STOP_REASONS,
    UNKNOWN_TOOL,
    Kind,
    Metric,
)
from telemetry.settings import TelemetrySettings

log = logging.getLogger(__name__)

_METHODS = frozenset(MCP_METHODS)
_ERRORS = frozenset(ERROR_TYPES)


class RequestFacts(Protocol):
    """One finished request, as the gateway reports it."""

    @property
    def server_id(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def target(self) -> str | None: ...  # the tool or prompt name
    @property
    def duration(self) -> float: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def upstream_duration(self) -> float | None: ...  # time spent waiting on the upstream, if it was asked
    @property
    def protocol_version(self) -> str: ...
    @property
    def upstream_transport(self) -> str | None: ...  # "stdio" or "streamable-http"


@dataclass(frozen=True, slots=True)
class ServerSample:
    server_id: str
    running: bool
    pid: int | None
    uptime: float | None
    in_flight: int
    protocol_version: str | None = None  # the MCP revision the gateway speaks with it, while it runs


@dataclass(frozen=True, slots=True)
class PoolSample:
    server_id: str
    active: int
    size: int
    circuit_state: int = 0  # 0 closed, 1 half-open, 2 open


class Fleet(Protocol):
    """What the recorder reads at collection time."""

    def server_samples(self) -> Iterable[ServerSample]: ...

    def pool_samples(self) -> Iterable[PoolSample]: ...

    def tasks(self) -> int | None:
        """asyncio tasks alive in the process; None before the event loop runs."""
        ...


class _NoFleet:
    """What the recorder reads before it is given the fleet to watch: nothing."""

    def server_samples(self) -> Iterable[ServerSample]:
        return ()

    def pool_samples(self) -> Iterable[PoolSample]:
        return ()

    def tasks(self) -> int | None:
        return None


def _network_transport(upstream: str | None) -> str:
    return "pipe" if upstream == "stdio" else "tcp"


class Recorder:
    """The gateway's observer. Its gauges read a `Fleet`, given by `watch` once the gateway exists
    (the gateway needs its observer first): until then they have no samples."""

    def __init__(self, meter: Meter, settings: TelemetrySettings) -> None:
        self.settings = settings
        self.fleet: Fleet = _NoFleet()
        self.gateway_id = settings.gateway_id
        self.limit = settings.cardinality_limit
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._errors: dict[tuple[str, str], int] = defaultdict(int)
        self._tools: dict[tuple[str, str], int] = defaultdict(int)
        self._starts: dict[str, int] = defaultdict(int)
        self._stops: dict[tuple[str, str], int] = defaultdict(int)
        self._hits: dict[str, int] = defaultdict(int)
        self._misses: dict[str, int] = defaultdict(int)
        self._evictions: dict[tuple[str, str], int] = defaultdict(int)
        self._health_failures: dict[str, int] = defaultdict(int)
        self._rejections: dict[tuple[str, str], int] = defaultdict(int)
        self._input_rounds: dict[tuple[str, str], int] = defaultdict(int)
        self._listening: dict[str, int] = defaultdict(int)
        self._holding: dict[str, int] = defaultdict(int)
        self._omissions: dict[tuple[str, str], int] = defaultdict(int)
        self._advertised: dict[str, frozenset[str]] = {}
        self._prompts: set[tuple[str, str]] = set()  # (server, prompt) pairs that became label values
        self._attrs: dict[tuple[Any, ...], dict[str, str]] = {}
        self._processes: dict[int, psutil.Process] = {}

        def counter(name: str, read: Callable[[], Iterable[Observation]]) -> None:
            metric = BY_NAME[name]
            meter.create_observable_counter(
                metric.instrument, [lambda options: self._safely(metric, read)], metric.unit, metric.description
            )

        def gauge(name: str, read: Callable[[], Iterable[Observation]]) -> None:
            metric = BY_NAME[name]
            meter.create_observable_gauge(
                metric.instrument, [lambda options: self._safely(metric, read)], metric.unit, metric.description
            )

        def histogram(name: str) -> Histogram:
            metric = BY_NAME[name]
            assert metric.kind is Kind.HISTOGRAM
            return meter.create_histogram(
                metric.instrument,
                metric.unit,
                metric.description,
                explicit_bucket_boundaries_advisory=list(metric.buckets),
            )

        counter("mcp_gateway_requests_total", lambda: self._observe(self._requests, ("server_id", "method")))
        counter("mcp_gateway_errors_total", lambda: self._observe(self._errors, ("server_id", "error_type")))
        counter("mcp_server_tools_called_total", lambda: self._observe(self._tools, ("server_id", "tool_name")))
        counter("mcp_gateway_server_starts_total", lambda: self._observe(self._starts, ("server_id",)))
        counter("mcp_gateway_server_stops_total", lambda: self._observe(self._stops, ("server_id", "reason")))
        counter("mcp_session_pool_hits_total", lambda: self._observe_pool(self._hits))
        counter("mcp_session_pool_misses_total", lambda: self._observe_pool(self._misses))
        counter("mcp_session_pool_evictions_total", lambda: self._observe_pool(self._evictions, "reason"))
        counter("mcp_session_pool_health_check_failures_total", lambda: self._observe_pool(self._health_failures))
        counter("mcp_gateway_rejections_total", lambda: self._observe(self._rejections, ("server_id", "reason")))
        counter(
            "mcp_gateway_input_required_rounds_total",
            lambda: self._observe(self._input_rounds, ("server_id", "bridge")),
        )
        gauge("mcp_gateway_listen_streams", lambda: self._observe(self._listening, ("server_id",)))
        gauge("mcp_gateway_held_calls", lambda: self._observe(self._holding, ("server_id",)))
        counter(
            "mcp_gateway_aggregate_omissions_total", lambda: self._observe(self._omissions, ("server_id", "reason"))
        )
        gauge("mcp_gateway_active_servers", self._active_servers)
        gauge("mcp_server_uptime_seconds", self._uptimes)
        gauge("mcp_server_protocol_info", self._protocols)
        gauge("mcp_server_memory_bytes", self._memory)
        gauge("mcp_gateway_inflight_requests", self._in_flight)
        gauge("mcp_session_pool_active_sessions", lambda: self._pool_gauge(lambda s: s.active))
        gauge("mcp_session_pool_size", lambda: self._pool_gauge(lambda s: s.size))
        gauge("mcp_session_pool_circuit_state", lambda: self._pool_gauge(lambda s: s.circuit_state))
        gauge("mcp_gateway_event_loop_tasks", self._tasks)
        self._duration = histogram("mcp_gateway_request_duration_seconds")
        self._start_duration = histogram("mcp_gateway_server_start_duration_seconds")
        self._acquire_duration = histogram("mcp_session_pool_acquire_duration_seconds")
        self._semconv = settings.semconv
        if settings.semconv:
            self._server_op = histogram("mcp_server_operation_duration_seconds")
            self._client_op = histogram("mcp_client_operation_duration_seconds")
            self._server_session = histogram("mcp_server_session_duration_seconds")
            self._client_session = histogram("mcp_client_session_duration_seconds")
        self._start_at_zero(settings.server_ids)

    def _start_at_zero(self, server_ids: Sequence[str]) -> None:
        """The series whose label values are known now exist from the start, at 0 (see the catalog's `initial`)."""
        for server in server_ids:
            self._requests[(server, "tools/call")] = 0
            self._starts[server] = 0
            self._hits[server] = self._misses[server] = self._health_failures[server] = 0
            for reason in STOP_REASONS:
                self._stops[(server, reason)] = 0
            for error in ERROR_TYPES:
                self._errors[(server, error)] = 0
            for reason in EVICTION_REASONS:
                self._evictions[(server, reason)] = 0
            for reason in OMISSION_REASONS:
                self._omissions[(server, reason)] = 0
            for bridge in INPUT_BRIDGES:
                self._input_rounds[(server, bridge)] = 0
        for server in (*server_ids, GATEWAY_SERVER):
            for reason in REJECTION_REASONS:
                self._rejections[(server, reason)] = 0
            self._listening[server] = self._holding[server] = 0

    def watch(self, fleet: Fleet) -> None:
        """Read the gauges from `fleet` from now on."""
        self.fleet = fleet

    # -- the gateway's observation points ------------------------------------------------------

    def request_finished(self, record: RequestFacts) -> None:
        try:
            self._request_finished(record)
        except Exception:
            log.exception("telemetry: recording a request failed")

    def _request_finished(self, record: RequestFacts) -> None:
        server = record.server_id or GATEWAY_SERVER
        method = record.method if record.method in _METHODS else OTHER
        key = (server, method)
        self._requests[key] += 1
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._attrs[key] = {"server_id": server, "method": method}
        self._duration.record(record.duration, attrs)
        error = record.error_type
        if error is not None:
            if error not in _ERRORS:
                error = "internal"
            self._errors[(server, error)] += 1
        tool = None
        if method == "tools/call" and server != GATEWAY_SERVER:  # a call the gateway refused invoked no tool
            tool = self._tool_label(server, record.target)
            self._count_bounded(self._tools, (server, tool))
        if self._semconv:
            self._record_semconv(record, method, tool, error)

    def _record_semconv(self, record: RequestFacts, method: str, tool: str | None, error: str | None) -> None:
        prompt = self._prompt_label(record.server_id, record.target, error) if method == "prompts/get" else None
        key = ("op", method, tool, prompt, error, record.protocol_version, record.upstream_transport)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {"mcp.method.name": method, "mcp.protocol.version": record.protocol_version}
            if tool is not None:
                attrs["gen_ai.tool.name"] = tool
            if prompt is not None:
                attrs["gen_ai.prompt.name"] = prompt
            if error is not None:
                attrs["error.type"] = error
            server_attrs = {**attrs, "network.transport": "tcp"}
            client_attrs = {**attrs, "network.transport": _network_transport(record.upstream_transport)}
            self._attrs[key] = server_attrs
            self._attrs[("client", *key)] = client_attrs
            attrs = server_attrs
        self._server_op.record(record.duration, attrs)
        if record.upstream_duration is not None:
            self._client_op.record(record.upstream_duration, self._attrs[("client", *key)])

    def tools_listed(self, server_id: str, names: Sequence[str], first_page: bool) -> None:
        """The upstream advertised these tools: only they become label values, each at 0 until called."""
        try:
            known = frozenset() if first_page else self._advertised.get(server_id, frozenset())
            self._advertised[server_id] = known | frozenset(str(name) for name in names)
            for name in names:  # this page's: the earlier pages' are there already
                key = (server_id, str(name))
                if key not in self._tools and len(self._tools) < self.limit:
                    self._tools[key] = 0
        except Exception:
            log.exception("telemetry: recording advertised tools failed")

    def server_started(self, server_id: str, start_seconds: float) -> None:
        self._starts[server_id] += 1
        try:
            self._start_duration.record(start_seconds, self._server_attrs(server_id))
        except Exception:
            log.exception("telemetry: recording a start failed")

    def server_stopped(self, server_id: str, reason: str) -> None:
        self._stops[(server_id, reason if reason in STOP_REASONS else OTHER)] += 1

    def pool_event(self, server_id: str, event: str, reason: str | None = None) -> None:
        if event == "hit":
            self._hits[server_id] += 1
        elif event == "miss":
            self._misses[server_id] += 1
        elif event == "evicted":
            self._evictions[(server_id, reason if reason in EVICTION_REASONS else OTHER)] += 1
        elif event == "health_check_failed":
            self._health_failures[server_id] += 1

    def rejected(self, server_id: str | None, reason: str) -> None:
        self._rejections[(server_id or GATEWAY_SERVER, reason if reason in REJECTION_REASONS else OTHER)] += 1

    def input_required(self, server_id: str, bridge: str) -> None:
        self._input_rounds[(server_id, bridge if bridge in INPUT_BRIDGES else OTHER)] += 1

    def listening(self, server_id: str | None, opened: bool) -> None:
        self._listening[server_id or GATEWAY_SERVER] += 1 if opened else -1

    def holding(self, server_id: str, held: bool) -> None:
        self._holding[server_id] += 1 if held else -1

    def omitted(self, server_id: str, reason: str) -> None:
        self._omissions[(server_id, reason if reason in OMISSION_REASONS else OTHER)] += 1

    def pool_acquired(self, server_id: str, seconds: float) -> None:
        try:
            key = ("pool", server_id)
            attrs = self._attrs.get(key)
            if attrs is None:
                attrs = self._attrs[key] = {"gateway_id": self.gateway_id, "server_id": server_id}
            self._acquire_duration.record(seconds, attrs)
        except Exception:
            log.exception("telemetry: recording an acquire failed")

    def session_closed(self, side: str, seconds: float, protocol_version: str, transport: str | None) -> None:
        """A client session with the gateway (side "server") or an upstream session (side "client") ended."""
        if not self._semconv:
            return
        try:
            network = "tcp" if side == "server" else _network_transport(transport)
            attrs = {"mcp.protocol.version": protocol_version, "network.transport": network}
            (self._server_session if side == "server" else self._client_session).record(seconds, attrs)
        except Exception:
            log.exception("telemetry: recording a session failed")

    # -- bounding label values -----------------------------------------------------------------

    def _tool_label(self, server_id: str, name: str | None) -> str:
        if name is None:
            return UNKNOWN_TOOL
        return name if name in self._advertised.get(server_id, ()) else UNKNOWN_TOOL

    def _prompt_label(self, server_id: str | None, name: str | None, error: str | None) -> str:
        """A prompt the server answered for; a failed get names none the server has ("unknown").

        A server that answers any name cannot grow the series past `cardinality_limit` prompts ("other").
        """
        if name is None or error is not None or len(name) > 128:
            return UNKNOWN_TOOL
        key = (server_id or GATEWAY_SERVER, name)
        if key not in self._prompts:
            if len(self._prompts) >= self.limit:
                return OTHER
            self._prompts.add(key)
        return name

    def _count_bounded(self, counts: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
        if key not in counts and len(counts) >= self.limit:
            key = (key[0], OTHER)
        counts[key] += 1

    def _server_attrs(self, server_id: str) -> dict[str, str]:
        key = ("server", server_id)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._attrs[key] = {"server_id": server_id}
        return attrs

    # -- collection ------------------------------------------------------------------------------

    def _safely(self, metric: Metric, read: Callable[[], Iterable[Observation]]) -> Iterable[Observation]:
        try:
            return list(read())
        except Exception:
            log.exception("telemetry: collecting %s failed", metric.name)
            return []

    @staticmethod
    def _observe(counts: dict[Any, int], labels: tuple[str, ...]) -> Iterable[Observation]:
        for key, value in list(counts.items()):
            values = key if isinstance(key, tuple) else (key,)
            yield Observation(value, dict(zip(labels, values, strict=True)))

    def _observe_pool(self, counts: dict[Any, int], extra: str | None = None) -> Iterable[Observation]:
        for key, value in list(counts.items()):
            attrs = {"gateway_id": self.gateway_id}
            if extra is None:
                attrs["server_id"] = key
            else:
                attrs["server_id"], attrs[extra] = key
            yield Observation(value, attrs)

    def _tasks(self) -> Iterable[Observation]:
        tasks = self.fleet.tasks()
        if tasks is not None:
            yield Observation(tasks)

    def _active_servers(self) -> Iterable[Observation]:
        yield Observation(sum(1 for sample in self.fleet.server_samples() if sample.running))

    def _uptimes(self) -> Iterable[Observation]:
        for sample in self.fleet.server_samples():
            if sample.running and sample.uptime is not None:
                yield Observation(sample.uptime, self._server_attrs(sample.server_id))

    def _protocols(self) -> Iterable[Observation]:
        for sample in self.fleet.server_samples():
            if sample.running and sample.protocol_version is not None:
                attrs = {**self._server_attrs(sample.server_id), "protocol_version": sample.protocol_version}
                yield Observation(1, attrs)

    def _in_flight(self) -> Iterable[Observation]:
        for sample in self.fleet.server_samples():
            yield Observation(sample.in_flight, self._server_attrs(sample.server_id))

    def _memory(self) -> Iterable[Observation]:
        alive = set()
        for sample in self.fleet.server_samples():
            if sample.pid is None:
                continue
            alive.add(sample.pid)
            rss = self._tree_rss(sample.pid)
            if rss is not None:
                yield Observation(rss, self._server_attrs(sample.server_id))
        for pid in set(self._processes) - alive:
            del self._processes[pid]

    def _tree_rss(self, pid: int) -> int | None:
        """Resident memory of a process and all its descendants (npx and the node it runs, say)."""
        try:
            process = self._processes.get(pid)
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
            total = process.memory_info().rss
            for child in process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    continue
            return int(total)
        except psutil.Error:
            self._processes.pop(pid, None)
            return None

    def _pool_gauge(self, value: Callable[[PoolSample], int]) -> Iterable[Observation]:
        for sample in self.fleet.pool_samples():
            yield Observation(value(sample), {"gateway_id": self.gateway_id, "server_id": sample.server_id})
