"""Every instrument the gateway records, declared once.

Each entry names the Prometheus family exactly as `/metrics` shows it, the OpenTelemetry instrument
behind it (name, kind, unit), its labels and the closed value set of every enum-like label. The
recorder creates instruments from here, `docs/metrics.md` is generated from here, and tests fail
when `/metrics` shows a family this module does not declare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class Kind(StrEnum):
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"  # observed at collection time


# -- closed label value sets --------------------------------------------------------------------

MCP_METHODS: Final = (
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/roots/list_changed",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
    "notifications/resources/updated",
    "notifications/elicitation/complete",
    "notifications/tasks/status",
    "server/discover",
    "subscriptions/listen",
    "notifications/subscriptions/acknowledged",
    "tasks/update",
    "other",
)
ERROR_TYPES: Final = (
    "timeout",
    "upstream_error",
    "tool_error",
    "transport",
    "protocol",
    "rejected",
    "unavailable",
    "not_found",
    "pool_exhausted",
    "circuit_open",
    "internal",
)
STOP_REASONS: Final = ("idle", "crash", "shutdown", "manual", "health_check", "start_failed")
EVICTION_REASONS: Final = (
    "ttl_expired",
    "idle",
    "health_check",
    "circuit_breaker",
    "capacity",
    "upstream_closed",
    "manual",
    "shutdown",
)
REJECTION_REASONS: Final = (
    "session_limit",
    "identity_sessions",
    "identity_share",
    "stream_overflow",
    "body_too_large",
    "unauthorized",
    "host",
    "origin",
    "cross_site",
    "header_mismatch",
    "unsupported_version",
)
OMISSION_REASONS: Final = ("starting", "failed")
# How an input-required round crossed the gateway: a 2026 server's answer relayed to a 2025 client as
# requests, or passed to a 2026 client; or a 2025 server's question held for a 2026 client's retry.
INPUT_BRIDGES: Final = ("relayed", "passed", "held")
UNKNOWN_TOOL: Final = "unknown"
OTHER: Final = "other"
GATEWAY_SERVER: Final = "_gateway"  # server_id of requests the gateway answered without an upstream

# MCP calls take milliseconds to minutes.
REQUEST_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The semantic conventions' advice for MCP operation and session durations.
SEMCONV_BUCKETS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
START_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


@dataclass(frozen=True)
class Metric:
    name: str  # the Prometheus family, exactly as exposed
    instrument: str  # the OpenTelemetry instrument name (what OTLP carries)
    kind: Kind
    unit: str
    description: str
    labels: tuple[str, ...] = ()
    values: dict[str, tuple[str, ...]] = field(default_factory=dict)  # closed sets of enum-like labels
    buckets: tuple[float, ...] = ()
    semconv: bool = False  # an OpenTelemetry semantic-convention instrument (switchable off)
    questions: tuple[tuple[str, str], ...] = ()  # (question an operator asks, PromQL that answers it)
    # Which series exist at 0 before anything happens, so rate() and alerts answer 0, not "no data".
    initial: str = ""


SEMCONV_ATTRIBUTES: Final = (
    "mcp.method.name",
    "gen_ai.tool.name",
    "gen_ai.prompt.name",
    "error.type",
    "mcp.protocol.version",
    "network.transport",
)
_SESSION_ATTRIBUTES: Final = ("mcp.protocol.version", "network.transport", "error.type")

POOL_LABELS: Final = ("gateway_id", "server_id")


def _prom(attribute: str) -> str:
    return attribute.replace(".", "_")


METRICS: Final[tuple[Metric, ...]] = (
    # -- from the gateway feature request ------------------------------------------------------
    Metric(
        "mcp_gateway_requests_total",
        "mcp_gateway_requests",
        Kind.COUNTER,
        "",
        "MCP requests handled, by upstream server and method.",
        ("server_id", "method"),
        {"method": MCP_METHODS},
        questions=(
            ("Request rate per server", "sum by (server_id) (rate(mcp_gateway_requests_total[5m]))"),
            (
                "Error ratio per server",
                "sum by (server_id) (rate(mcp_gateway_errors_total[5m]))"
                " / sum by (server_id) (rate(mcp_gateway_requests_total[5m]))",
            ),
        ),
        initial="every configured server, method tools/call",
    ),
    Metric(
        "mcp_gateway_request_duration_seconds",
        "mcp_gateway_request_duration",
        Kind.HISTOGRAM,
        "s",
        "Time from a request's arrival to its answer, by upstream server and method.",
        ("server_id", "method"),
        {"method": MCP_METHODS},
        buckets=REQUEST_BUCKETS,
        questions=(
            (
                "p95 latency per server",
                "histogram_quantile(0.95, sum by (server_id, le)"
                " (rate(mcp_gateway_request_duration_seconds_bucket[5m])))",
            ),
        ),
    ),
    Metric(
        "mcp_gateway_active_servers",
        "mcp_gateway_active_servers",
        Kind.GAUGE,
        "",
        "Upstream servers running now (stdio processes up, remote servers connected).",
        questions=(("Servers running", "mcp_gateway_active_servers"),),
    ),
    Metric(
        "mcp_gateway_server_starts_total",
        "mcp_gateway_server_starts",
        Kind.COUNTER,
        "",
        "Upstream server starts (a stdio process answered initialize; a remote server connected).",
        ("server_id",),
        questions=(
            ("Crash-looping servers", "sum by (server_id) (increase(mcp_gateway_server_starts_total[15m])) > 3"),
        ),
        initial="every configured server",
    ),
    Metric(
        "mcp_gateway_server_stops_total",
        "mcp_gateway_server_stops",
        Kind.COUNTER,
        "",
        "Upstream server stops, by reason; a start that fails is a stop with reason start_failed.",
        ("server_id", "reason"),
        {"reason": STOP_REASONS},
        questions=(
            ("Crashes per server", 'sum by (server_id) (increase(mcp_gateway_server_stops_total{reason="crash"}[1h]))'),
        ),
        initial="every configured server x every reason",
    ),
    Metric(
        "mcp_gateway_errors_total",
        "mcp_gateway_errors",
        Kind.COUNTER,
        "",
        "Requests that ended in an error, by upstream server and error type.",
        ("server_id", "error_type"),
        {"error_type": ERROR_TYPES},
        questions=(("Errors by type", "sum by (error_type) (rate(mcp_gateway_errors_total[5m]))"),),
        initial="every configured server x every error type",
    ),
    Metric(
        "mcp_server_tools_called_total",
        "mcp_server_tools_called",
        Kind.COUNTER,
        "",
        f"tools/call requests by server and tool; tools the server never advertised count as {UNKNOWN_TOOL!r}.",
        ("server_id", "tool_name"),
        questions=(
            ("Top 10 tools", "topk(10, sum by (server_id, tool_name) (rate(mcp_server_tools_called_total[1h])))"),
        ),
        initial="every tool a server advertised, once it advertised it",
    ),
    Metric(
        "mcp_server_uptime_seconds",
        "mcp_server_uptime",
        Kind.GAUGE,
        "s",
        "Seconds since the server last started; absent while it is not running.",
        ("server_id",),
        questions=(("Servers restarted in the last 10 minutes", "mcp_server_uptime_seconds < 600"),),
    ),
    Metric(
        "mcp_server_protocol_info",
        "mcp_server_protocol",
        Kind.GAUGE,
        "1",
        "1 while a server runs, labelled with the MCP revision the gateway speaks with it (probed at each start).",
        ("server_id", "protocol_version"),
        questions=(
            ("Servers spoken to in 2026-07-28", 'count(mcp_server_protocol_info{protocol_version="2026-07-28"})'),
        ),
    ),
    Metric(
        "mcp_server_memory_bytes",
        "mcp_server_memory",
        Kind.GAUGE,
        "By",
        "Resident memory of a stdio server's process and its children (e.g. npx and the node it runs).",
        ("server_id",),
        questions=(("Memory per server", "max by (server_id) (mcp_server_memory_bytes)"),),
    ),
    Metric(
        "mcp_gateway_server_start_duration_seconds",
        "mcp_gateway_server_start_duration",
        Kind.HISTOGRAM,
        "s",
        "Cold-start time: from spawning (or connecting) until the server answered initialize.",
        ("server_id",),
        buckets=START_BUCKETS,
    ),
    Metric(
        "mcp_gateway_inflight_requests",
        "mcp_gateway_inflight_requests",
        Kind.GAUGE,
        "",
        "Requests being forwarded to each server now.",
        ("server_id",),
    ),
    # -- from the session-pool feature request ---------------------------------------------------
    Metric(
        "mcp_session_pool_hits_total",
        "mcp_session_pool_hits",
        Kind.COUNTER,
        "",
        "Requests served by an already initialized upstream session.",
        POOL_LABELS,
        questions=(
            (
                "Session pool hit rate",
                "sum(rate(mcp_session_pool_hits_total[5m])) / (sum(rate(mcp_session_pool_hits_total[5m]))"
                " + sum(rate(mcp_session_pool_misses_total[5m])))",
            ),
        ),
        initial="every configured server",
    ),
    Metric(
        "mcp_session_pool_misses_total",
        "mcp_session_pool_misses",
        Kind.COUNTER,
        "",
        "Requests that had to create (initialize) a new upstream session.",
        POOL_LABELS,
        initial="every configured server",
    ),
    Metric(
        "mcp_session_pool_evictions_total",
        "mcp_session_pool_evictions",
        Kind.COUNTER,
        "",
        "Upstream sessions dropped from the pool, by reason.",
        (*POOL_LABELS, "reason"),
        {"reason": EVICTION_REASONS},
        initial="every configured server x every reason",
    ),
    Metric(
        "mcp_session_pool_health_check_failures_total",
        "mcp_session_pool_health_check_failures",
        Kind.COUNTER,
        "",
        "Pooled sessions that failed their health check (ping).",
        POOL_LABELS,
        questions=(
            (
                "Health-check failure rate per gateway",
                "sum(rate(mcp_session_pool_health_check_failures_total[5m])) by (gateway_id)",
            ),
        ),
        initial="every configured server",
    ),
    Metric(
        "mcp_session_pool_active_sessions",
        "mcp_session_pool_active_sessions",
        Kind.GAUGE,
        "",
        "Pooled upstream sessions in use by a request now.",
        POOL_LABELS,
        questions=(("Active sessions by gateway", "mcp_session_pool_active_sessions"),),
    ),
    Metric(
        "mcp_session_pool_size",
        "mcp_session_pool_size",
        Kind.GAUGE,
        "",
        "Pooled upstream sessions now, idle and in use.",
        POOL_LABELS,
    ),
    Metric(
        "mcp_session_pool_acquire_duration_seconds",
        "mcp_session_pool_acquire_duration",
        Kind.HISTOGRAM,
        "s",
        "Time to get a session: near zero on a hit, session creation on a miss, the wait when exhausted.",
        POOL_LABELS,
        buckets=(0.00001, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30),
        questions=(
            (
                "p95 time to get a session",
                "histogram_quantile(0.95, sum by (server_id, le)"
                " (rate(mcp_session_pool_acquire_duration_seconds_bucket[5m])))",
            ),
        ),
    ),
    Metric(
        "mcp_session_pool_circuit_state",
        "mcp_session_pool_circuit_state",
        Kind.GAUGE,
        "",
        "The server's circuit breaker: 0 closed, 1 half-open (one probe allowed), 2 open (failing fast).",
        POOL_LABELS,
        questions=(("Servers failing fast", "mcp_session_pool_circuit_state == 2"),),
    ),
    # -- the gateway protecting itself and its callers ------------------------------------------------
    Metric(
        "mcp_gateway_rejections_total",
        "mcp_gateway_rejections",
        Kind.COUNTER,
        "",
        "Clients refused, or cut off, by a limit or a check, by reason; server_id is the endpoint's server "
        f"({GATEWAY_SERVER!r} for /mcp and the operations routes).",
        ("server_id", "reason"),
        {"reason": REJECTION_REASONS},
        questions=(
            ("Refusals by reason", "sum by (reason) (rate(mcp_gateway_rejections_total[5m]))"),
            (
                "Callers held to their share of a shared server",
                'sum by (server_id) (increase(mcp_gateway_rejections_total{reason="identity_share"}[1h]))',
            ),
        ),
        initial=f"every configured server and {GATEWAY_SERVER!r} x every reason",
    ),
    Metric(
        "mcp_gateway_aggregate_omissions_total",
        "mcp_gateway_aggregate_omissions",
        Kind.COUNTER,
        "",
        "Servers left out of an aggregated answer on /mcp (initialize or a list): still starting after "
        "limits.cold_start_wait, or failed.",
        ("server_id", "reason"),
        {"reason": OMISSION_REASONS},
        questions=(
            (
                "Servers missing from /mcp lists",
                "sum by (server_id, reason) (increase(mcp_gateway_aggregate_omissions_total[15m])) > 0",
            ),
        ),
        initial="every configured server x every reason",
    ),
    Metric(
        "mcp_gateway_input_required_rounds_total",
        "mcp_gateway_input_required_rounds",
        Kind.COUNTER,
        "",
        "Input-required rounds (MCP 2026-07-28): a 2026 server's, relayed to a 2025 client as server requests or "
        "passed to a 2026 client (its requestState sealed); or a 2025 server's question, its call held for a 2026 "
        "client's retry.",
        ("server_id", "bridge"),
        {"bridge": INPUT_BRIDGES},
        questions=(
            (
                "Input-required rounds per server",
                "sum by (server_id, bridge) (rate(mcp_gateway_input_required_rounds_total[5m]))",
            ),
        ),
        initial="every configured server x every bridge",
    ),
    Metric(
        "mcp_gateway_held_calls",
        "mcp_gateway_held_calls",
        Kind.GAUGE,
        "",
        "Calls held for a 2026 client's answer to what their 2025 server asked mid-call (limits.max_held_calls, "
        f"each for limits.input_hold_seconds), per server endpoint ({GATEWAY_SERVER!r}: /mcp).",
        ("server_id",),
        questions=(("Calls waiting for a client's answer", "sum by (server_id) (mcp_gateway_held_calls)"),),
        initial=f"every configured server and {GATEWAY_SERVER!r}",
    ),
    Metric(
        "mcp_gateway_listen_streams",
        "mcp_gateway_listen_streams",
        Kind.GAUGE,
        "",
        f"Open subscriptions/listen streams of 2026 clients, per server endpoint ({GATEWAY_SERVER!r}: /mcp).",
        ("server_id",),
        questions=(("Clients listening for changes", "sum by (server_id) (mcp_gateway_listen_streams)"),),
        initial=f"every configured server and {GATEWAY_SERVER!r}",
    ),
    Metric(
        "mcp_gateway_event_loop_tasks",
        "mcp_gateway_event_loop_tasks",
        Kind.GAUGE,
        "",
        "asyncio tasks alive in the gateway process; a count that climbs while the load does not is a leak.",
        questions=(("Task growth over a day", "delta(mcp_gateway_event_loop_tasks[1d])"),),
    ),
    # -- OpenTelemetry semantic conventions for MCP -------------------------------------------------
    Metric(
        "mcp_server_operation_duration_seconds",
        "mcp.server.operation.duration",
        Kind.HISTOGRAM,
        "s",
        "MCP operations the gateway served to its clients (the gateway as MCP server).",
        tuple(_prom(a) for a in SEMCONV_ATTRIBUTES),
        {"mcp_method_name": MCP_METHODS, "error_type": ERROR_TYPES, "network_transport": ("tcp",)},
        buckets=SEMCONV_BUCKETS,
        semconv=True,
    ),
    Metric(
        "mcp_client_operation_duration_seconds",
        "mcp.client.operation.duration",
        Kind.HISTOGRAM,
        "s",
        "MCP operations the gateway sent to upstream servers (the gateway as MCP client).",
        tuple(_prom(a) for a in SEMCONV_ATTRIBUTES),
        {"mcp_method_name": MCP_METHODS, "error_type": ERROR_TYPES, "network_transport": ("pipe", "tcp")},
        buckets=SEMCONV_BUCKETS,
        semconv=True,
    ),
    Metric(
        "mcp_server_session_duration_seconds",
        "mcp.server.session.duration",
        Kind.HISTOGRAM,
        "s",
        "Lifetime of client sessions with the gateway.",
        tuple(_prom(a) for a in _SESSION_ATTRIBUTES),
        {"network_transport": ("tcp",), "error_type": ERROR_TYPES},
        buckets=SEMCONV_BUCKETS,
        semconv=True,
    ),
    Metric(
        "mcp_client_session_duration_seconds",
        "mcp.client.session.duration",
        Kind.HISTOGRAM,
        "s",
        "Lifetime of the gateway's sessions with upstream servers.",
        tuple(_prom(a) for a in _SESSION_ATTRIBUTES),
        {"network_transport": ("pipe", "tcp"), "error_type": ERROR_TYPES},
        buckets=SEMCONV_BUCKETS,
        semconv=True,
    ),
)

BY_NAME: Final = {metric.name: metric for metric in METRICS}
