"""The gateway's configuration: one typed model, validated at the edge.

A config file is YAML or JSON in either the gateway's own layout (`gateway:` + `servers:`) or the
`mcpServers` layout desktop clients use. `${VAR}` expands from the environment before validation.
Everything past `load_config` gets typed, already-valid values; every problem becomes a
`ConfigError` naming the file, the key path and what is wrong.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

SERVER_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """An invalid configuration; the message is meant for the operator as is."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartPolicy(_Model):
    """Restart a crashed stdio server with exponential backoff, at most `max_attempts` per `window`."""

    enabled: bool = True
    max_attempts: int = Field(5, ge=0)
    window: float = Field(60.0, gt=0, description="seconds")
    backoff_initial: float = Field(0.5, gt=0)
    backoff_max: float = Field(30.0, gt=0)


class PoolConfig(_Model):
    """Pooled upstream sessions of one server; see docs/session-pool.md."""

    share_sessions: bool = Field(False, description="one session for every caller (stateless upstreams only)")
    max_sessions: int = Field(64, gt=0, description="sessions with this server, all callers together")
    max_sessions_per_key: int = Field(4, gt=0, description="sessions per caller")
    max_requests_per_session: int = Field(64, gt=0, description="concurrent requests multiplexed on one session")
    max_requests_per_identity: int | None = Field(
        None,
        gt=0,
        description="concurrent requests one caller may have on a shared session (stdio, share_sessions); "
        "default: an equal share per configured token, at most four shares",
    )
    acquire_timeout: float = Field(10.0, gt=0, description="seconds to wait for a session when all are busy")
    ttl: float = Field(0.0, ge=0, description="close sessions older than this; 0 = never")
    idle_ttl: float = Field(600.0, ge=0, description="close sessions unused this long; 0 = never")
    health_check_interval: float = Field(30.0, ge=0, description="ping a session idle this long before use; 0 = never")
    health_check_timeout: float = Field(2.0, gt=0)
    failure_threshold: int = Field(5, gt=0, description="consecutive failures that open the circuit breaker")
    cooldown: float = Field(30.0, gt=0, description="seconds the breaker stays open before one probe")


class _ServerBase(_Model):
    lazy: bool = True
    idle_timeout: float = Field(0.0, ge=0, description="stop an idle stdio server after this many seconds; 0 = never")
    request_timeout: float = Field(60.0, gt=0)
    start_timeout: float = Field(30.0, gt=0, description="seconds to spawn and answer initialize")
    # Which MCP era to speak with the server: "auto" probes server/discover at each start and speaks
    # 2026-07-28 when the server offers it; "2025" always uses the initialize handshake (and sessions);
    # "2026" requires the server to answer server/discover.
    protocol: Literal["auto", "2025", "2026"] = "auto"
    restart: RestartPolicy = RestartPolicy()
    pool: PoolConfig = PoolConfig()


class StdioServer(_ServerBase):
    transport: Literal["stdio"] = "stdio"
    command: str = Field(min_length=1)
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None


class HttpServer(_ServerBase):
    transport: Literal["streamable-http"] = "streamable-http"
    url: str
    headers: dict[str, str] = {}

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


def _server_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "http" if "url" in value or value.get("transport") == "streamable-http" else "stdio"
    return getattr(value, "transport", None) and ("http" if value.transport != "stdio" else "stdio")


ServerConfig = Annotated[
    Annotated[StdioServer, Tag("stdio")] | Annotated[HttpServer, Tag("http")],
    Discriminator(
        _server_kind,
        custom_error_type="server_entry",
        custom_error_message="must be a mapping with a 'command' (stdio) or a 'url' (streamable HTTP)",
    ),
]


MAX_SHARES = 4  # a caller's default share of a limit is never under a quarter of it


def fair_share(total: int, identities: int) -> int:
    """A caller's default share of `total`: equal among the identities, at most `MAX_SHARES` shares."""
    return max(1, math.ceil(total / min(max(identities, 1), MAX_SHARES)))


class AuthConfig(_Model):
    """Bearer tokens accepted on MCP and admin routes; none means open, which a gateway bound beyond
    loopback refuses unless `allow_unauthenticated` says so."""

    tokens: list[str] = []
    metrics_token: str | None = Field(None, description="bearer token for /metrics; none = open")
    allow_unauthenticated: bool = Field(
        False, description="serve without tokens on a non-loopback address (a trusted network only)"
    )

    @field_validator("tokens")
    @classmethod
    def _non_empty(cls, tokens: list[str]) -> list[str]:
        if any(not token.strip() for token in tokens):
            raise ValueError("tokens must not be empty strings (is an environment variable unset?)")
        return tokens

    @field_validator("metrics_token")
    @classmethod
    def _non_empty_metrics_token(cls, token: str | None) -> str | None:
        if token is not None and not token.strip():
            raise ValueError("must not be an empty string (is an environment variable unset?); omit it for none")
        return token

    @property
    def identities(self) -> int:
        """How many callers can tell themselves apart: one per token, or one (anonymous) without tokens."""
        return max(1, len(set(self.tokens)))


class Limits(_Model):
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    max_upstream_message_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="one message from an upstream; a larger one fails its request"
    )
    max_stream_buffer_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="bytes queued for a client that does not read its stream; past it a GET stream is closed "
        "and a POST stream drops notifications",
    )
    max_sessions: int = Field(10_000, gt=0, description="downstream MCP sessions at once")
    max_sessions_per_identity: int | None = Field(
        None, gt=0, description="client sessions one caller may hold; default: an equal share per token, at most 4"
    )
    cold_start_wait: float = Field(
        5.0, ge=0, description="seconds /mcp's initialize and lists wait for a server still starting"
    )
    session_idle_timeout: float = Field(3600.0, gt=0, description="forget a client session unused this long")
    drain_timeout: float = Field(10.0, ge=0, description="seconds in-flight requests get on shutdown")
    page_size: int = Field(500, gt=0, description="items per page of the aggregated lists")
    max_held_calls: int = Field(
        1000, gt=0, description="calls held for a 2026 client's answer to a 2025 server's question, at once"
    )
    input_hold_seconds: float = Field(300.0, gt=0, description="how long a held call waits for the client's retry")


class GatewaySettings(_Model):
    id: str = Field(default_factory=socket.gethostname)
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    auth: AuthConfig = AuthConfig()
    limits: Limits = Limits()
    allowed_origins: list[str] = Field(
        default_factory=lambda: ["http://localhost", "http://127.0.0.1", "http://[::1]"],
        description="Origins allowed to call the gateway (any port of each); '*' allows all",
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host header values accepted (any port); default: loopback names when bound to loopback, else any",
    )
    state_key: str | None = Field(
        None,
        min_length=16,
        description="secret that seals the requestState of input-required answers; replicas that share it accept "
        "each other's (default: a random key per process, so a retry must come back to the same replica)",
    )

    @property
    def loopback(self) -> bool:
        """Bound to this machine only (127.0.0.0/8, ::1, localhost)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    def unauthenticated_refusal(self) -> str | None:
        """Why this gateway must not start open to the network, or None when it may start."""
        if self.loopback or self.auth.tokens or self.auth.allow_unauthenticated:
            return None
        return (
            f"gateway.host {self.host!r} is reachable beyond this machine and no gateway.auth.tokens are set: "
            "anyone who reaches it could call every tool and stop servers. Set tokens, or bind 127.0.0.1, "
            "or set gateway.auth.allow_unauthenticated: true for a trusted network"
        )

    def sessions_per_identity(self) -> int:
        explicit = self.limits.max_sessions_per_identity
        return explicit if explicit is not None else fair_share(self.limits.max_sessions, self.auth.identities)

    def effective_allowed_hosts(self) -> list[str] | None:
        """None means any Host; a loopback-bound gateway answers only loopback names (DNS rebinding)."""
        if self.allowed_hosts is not None:
            return None if "*" in self.allowed_hosts else self.allowed_hosts
        if self.loopback:
            names = ["localhost", "127.0.0.1", "[::1]"]
            bound = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
            return names if bound in names else [*names, bound]
        return None


class OtlpConfig(_Model):
    """OTLP push; unset fields fall back to the standard OTEL_EXPORTER_OTLP_* variables."""

    enabled: bool | None = Field(None, description="None: on when OTEL_METRICS_EXPORTER or an endpoint asks")
    protocol: Literal["http/protobuf", "grpc"] | None = None
    endpoint: str | None = None
    headers: dict[str, str] = {}
    interval: float | None = Field(None, gt=0, description="seconds between pushes (default 60)")
    temporality: Literal["cumulative", "delta", "lowmemory"] | None = None


class TelemetryConfig(_Model):
    enabled: bool = True
    semconv: bool = Field(True, description="the OpenTelemetry MCP semantic-convention histograms")
    scope_labels: bool = Field(False, description="otel_scope_* labels on every Prometheus series")
    cardinality_limit: int = Field(
        2000, gt=0, description="(server, tool) and (server, prompt) label pairs; more count as other"
    )
    metrics_port: int | None = Field(None, ge=0, le=65535, description="also serve /metrics on this port")
    http_metrics: bool = Field(
        False,
        description="HTTP server metrics from opentelemetry-instrumentation-asgi (~0.1 ms CPU per request)",
    )
    otlp: OtlpConfig = OtlpConfig()


class Config(_Model):
    gateway: GatewaySettings = GatewaySettings()
    telemetry: TelemetryConfig = TelemetryConfig()
    servers: dict[str, ServerConfig] = {}

    @field_validator("servers")
    @classmethod
    def _server_ids(cls, servers: dict[str, Any]) -> dict[str, Any]:
        for server_id in servers:
            if not SERVER_ID.match(server_id):
                raise ValueError(f"server id {server_id!r} must match {SERVER_ID.pattern}")
        return servers


# Keys a desktop client's mcpServers entry may carry that mean nothing to the gateway.
_MCP_SERVERS_IGNORED = {"type", "disabled", "autoApprove", "alwaysAllow", "timeout", "description", "transportType"}


def _from_mcp_servers(raw: dict[str, Any]) -> dict[str, Any]:
    entries = raw.get("mcpServers")
    if not isinstance(entries, dict):
        raise ConfigError("mcpServers: must be a mapping of server id to server")
    if "servers" in raw:
        raise ConfigError("servers: use either servers or mcpServers, not both")
    servers = {}
    for name, entry in entries.items():
        if isinstance(entry, dict):
            if entry.get("disabled"):
                continue
            entry = {k: v for k, v in entry.items() if k not in _MCP_SERVERS_IGNORED}
        servers[name] = entry
    rest = {k: v for k, v in raw.items() if k != "mcpServers"}
    return {**rest, "servers": servers}


def _expand(value: Any, path: str, env: dict[str, str]) -> Any:
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return env[name]

        return _VAR.sub(lookup, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    return value


def parse_config(raw: Any, *, env: dict[str, str] | None = None) -> Config:
    """Validate already-parsed config data; raises ConfigError with key paths."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping")
    # Errors name the keys as the user wrote them: `mcpServers.x`, not the `servers.x` it becomes.
    servers_key = "mcpServers" if "mcpServers" in raw else "servers"
    if servers_key == "mcpServers":
        raw = _from_mcp_servers(raw)
    env = dict(os.environ) if env is None else env
    raw = {k: _expand(v, servers_key if k == "servers" else str(k), env) for k, v in raw.items()}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, servers_key)) from None


def load_config(path: str | Path, *, env: dict[str, str] | None = None) -> Config:
    """Read, expand and validate a config file; every problem is a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    try:
        return parse_config(raw, env=env)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _describe(exc: ValidationError, servers_key: str) -> str:
    lines = []
    for error in exc.errors():
        # Drop the discriminator's tag ("stdio"/"http") from the path: users never wrote it.
        loc = [str(part) for part in error["loc"] if part not in ("stdio", "http")]
        if loc[:1] == ["servers"]:
            loc[0] = servers_key
        where = ".".join(loc) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{where}: {message}")
    return "; ".join(lines)
