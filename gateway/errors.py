"""The gateway's one exception hierarchy.

Every failure a client can see is a `GatewayError` carrying a JSON-RPC code, an HTTP status for the
cases answered outside JSON-RPC, and an `error_type` from a closed set that metrics label by. The
HTTP boundary (`gateway.transport`) is the only place these become responses.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorType(StrEnum):
    """Why a request failed: the closed value set of the `error_type` label."""

    TIMEOUT = "timeout"  # the upstream did not answer within request_timeout
    UPSTREAM_ERROR = "upstream_error"  # the upstream answered with a JSON-RPC error
    TOOL_ERROR = "tool_error"  # tools/call answered with isError: true
    TRANSPORT = "transport"  # the upstream process died, a pipe broke, an HTTP exchange failed
    PROTOCOL = "protocol"  # the client sent something that is not valid MCP
    REJECTED = "rejected"  # refused by policy: auth, size limit, shutting down, unknown session
    UNAVAILABLE = "unavailable"  # the upstream could not be started or reached
    NOT_FOUND = "not_found"  # unknown server, tool, prompt or resource
    POOL_EXHAUSTED = "pool_exhausted"  # every session busy and none could be added within acquire_timeout
    CIRCUIT_OPEN = "circuit_open"  # the server's circuit breaker is open: failing fast
    INTERNAL = "internal"  # a bug in the gateway


# JSON-RPC codes (spec) and the MCP SDK's conventions for the rest.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
CONNECTION_CLOSED = -32000
REQUEST_TIMEOUT = -32001
RESOURCE_NOT_FOUND = -32002  # 2025 only: 2026-07-28 says -32602
# MCP 2026-07-28
HEADER_MISMATCH = -32020
MISSING_CAPABILITY = -32021
UNSUPPORTED_VERSION = -32022


class GatewayError(Exception):
    """A failure answered to the client as a JSON-RPC error (or an HTTP status outside JSON-RPC)."""

    code: int = INTERNAL_ERROR
    error_type: ErrorType = ErrorType.INTERNAL
    http_status: int = 500
    transport_level: bool = False  # answered with `http_status`, not inside a 200
    rejection: str | None = None  # a refusal by a limit: its `events.Rejection` reason, counted where answered

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(GatewayError):
    code, error_type, http_status = PARSE_ERROR, ErrorType.PROTOCOL, 400
    transport_level = True


class InvalidRequest(GatewayError):
    code, error_type, http_status = INVALID_REQUEST, ErrorType.PROTOCOL, 400
    transport_level = True


class MethodNotFound(GatewayError):
    code, error_type, http_status = METHOD_NOT_FOUND, ErrorType.PROTOCOL, 200


class InvalidParams(GatewayError):
    code, error_type, http_status = INVALID_PARAMS, ErrorType.PROTOCOL, 200


class HeaderMismatch(GatewayError):
    """A 2026 request whose MCP-Protocol-Version, Mcp-Method, Mcp-Name or Mcp-Param-* header disagrees with its body."""

    code, error_type, http_status = HEADER_MISMATCH, ErrorType.PROTOCOL, 400
    transport_level = True
    rejection = "header_mismatch"


class UnsupportedVersion(GatewayError):
    """A 2026 request for a protocol version the gateway does not serve (`data` lists the ones it does)."""

    code, error_type, http_status = UNSUPPORTED_VERSION, ErrorType.PROTOCOL, 400
    transport_level = True
    rejection = "unsupported_version"


class NotFound(GatewayError):
    """An unknown tool, prompt or resource named by the client."""

    code, error_type, http_status = INVALID_PARAMS, ErrorType.NOT_FOUND, 200


class ResourceNotFound(NotFound):
    code = RESOURCE_NOT_FOUND


class Rejected(GatewayError):
    code, error_type, http_status = INVALID_REQUEST, ErrorType.REJECTED, 400


class ShuttingDown(Rejected):
    http_status = 503
    transport_level = True


class TooManySessions(Rejected):
    http_status = 503
    transport_level = True
    rejection = "session_limit"


class SessionQuota(Rejected):
    """The caller holds its share of client sessions (limits.max_sessions_per_identity)."""

    http_status = 429
    transport_level = True
    rejection = "identity_sessions"


class ClientDeclined(GatewayError):
    """A 2025 client asked, for a 2026 server, for input (elicitation, sampling, roots) did not give it."""

    code, error_type, http_status = INVALID_REQUEST, ErrorType.REJECTED, 200


class UpstreamTimeout(GatewayError):
    code, error_type, http_status = REQUEST_TIMEOUT, ErrorType.TIMEOUT, 504


class UpstreamClosed(GatewayError):
    """The upstream went away (crash, broken pipe, HTTP failure) while a request was in flight."""

    code, error_type, http_status = CONNECTION_CLOSED, ErrorType.TRANSPORT, 502


class SessionExpired(UpstreamClosed):
    """The upstream answered HTTP 404 for its session: it forgot it (restarted, or expired it).

    The server did not process the request, so it is safe to send it again on a new session.
    """


class UpstreamTooLarge(GatewayError):
    """The upstream sent a message over `limits.max_upstream_message_bytes`; it was dropped unread."""

    code, error_type, http_status = INTERNAL_ERROR, ErrorType.TRANSPORT, 502


class UpstreamInvalid(GatewayError):
    """The upstream answered with something that is not a JSON-RPC response (or one too deep to pass on)."""

    code, error_type, http_status = INTERNAL_ERROR, ErrorType.UPSTREAM_ERROR, 502


class TooDeep(GatewayError):
    """A message nested deeper than JSON can be written back out (about 900 levels)."""

    code, error_type, http_status = INVALID_PARAMS, ErrorType.PROTOCOL, 400


class UpstreamUnavailable(GatewayError):
    """The upstream could not be started or initialized."""

    code, error_type, http_status = CONNECTION_CLOSED, ErrorType.UNAVAILABLE, 503


class PoolExhausted(GatewayError):
    code, error_type, http_status = CONNECTION_CLOSED, ErrorType.POOL_EXHAUSTED, 503


class IdentityShare(PoolExhausted):
    """The caller holds its share of a shared session's request slots (pool.max_requests_per_identity)."""

    rejection = "identity_share"


class CircuitOpen(GatewayError):
    code, error_type, http_status = CONNECTION_CLOSED, ErrorType.CIRCUIT_OPEN, 503


def internal_error(server_id: str | None = None) -> dict[str, Any]:
    """The JSON-RPC error of a request the gateway failed by a fault of its own (logged where it happened)."""
    data = {"reason": "internal"} if server_id is None else {"server": server_id, "reason": "internal"}
    return {"code": INTERNAL_ERROR, "message": "Internal error in the gateway; its log has the details", "data": data}
