"""The 2026-07-28 revision of MCP, as the gateway serves it downstream and speaks it upstream.

In this revision there is no handshake and no session: every request is one POST that carries its
protocol version, the client's capabilities and info in `params._meta`, mirrored in the
`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*` headers. This module says which
era a POST belongs to, checks a 2026 request's envelope and headers, and turns what a server of
the 2025 revisions answers into what a 2026 client expects (`resultType`, cache hints, server info
in `_meta`). The header and envelope rules are the SDK's own (`mcp.shared.inbound`), so the gateway
judges a request exactly as a server built with the SDK would.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from mcp.shared.inbound import (
    NAME_BEARING_METHODS,
    InboundLadderRejection,
    classify_inbound_request,
    decode_header_value,
    encode_header_value,
    find_duplicated_routing_header,
    find_invalid_x_mcp_header,
    mcp_param_headers,
    validate_mcp_param_headers,
    x_mcp_header_map,
)

from gateway.errors import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MISSING_CAPABILITY,
    PARSE_ERROR,
    RESOURCE_NOT_FOUND,
    UNSUPPORTED_VERSION,
    GatewayError,
    HeaderMismatch,
    InvalidParams,
    MethodNotFound,
    UnsupportedVersion,
)
from gateway.protocol import SUPPORTED_VERSIONS, Message

MODERN_VERSIONS: Final = ("2026-07-28",)
LATEST_MODERN: Final = MODERN_VERSIONS[-1]

PROTOCOL_VERSION_KEY: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_KEY: Final = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_KEY: Final = "io.modelcontextprotocol/clientInfo"
LOG_LEVEL_KEY: Final = "io.modelcontextprotocol/logLevel"
DISCOVER: Final = "server/discover"
SERVER_INFO_KEY: Final = "io.modelcontextprotocol/serverInfo"
_RESERVED_PREFIX: Final = "io.modelcontextprotocol/"

# What the 2026 revision removed: a 2026 request for one of these is told the method does not exist.
REMOVED: Final = frozenset(
    {
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "resources/unsubscribe",
        "notifications/initialized",
        "notifications/roots/list_changed",
    }
)
# Results a client may cache: they carry `ttlMs` and `cacheScope`.
CACHEABLE: Final = frozenset(
    {"server/discover", "tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)
# The HTTP status of a 2026 error, by JSON-RPC code (the SDK's table); other codes are answered in a 200.
ERROR_STATUS: Final = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_CAPABILITY: 400,
    UNSUPPORTED_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}

_PLAIN_NAME: Final = re.compile(r"[!-~](?:[ -~]*[!-~])?")  # printable ASCII, no space at either end: sent as is
LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def is_modern_version(version: str) -> bool:
    return version in MODERN_VERSIONS


def is_modern(headers: Mapping[bytes, bytes], message: Any) -> bool:
    """Whether a POST belongs to the 2026 revision: the `_meta` envelope, or a version header of no 2025 revision.

    A 2025 request carries a 2025 `MCP-Protocol-Version` (or none, before 2025-06-18) and never the
    envelope; `initialize` without either is the start of a 2025 session. A request of a 2025 session
    (it names one) is judged by that session, whatever version it names; a stray session id beside
    the envelope is ignored.
    """
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and PROTOCOL_VERSION_KEY in meta:
        return True
    version = headers.get(b"mcp-protocol-version")
    if version is None or b"mcp-session-id" in headers:
        return False
    return version.decode("latin-1") not in SUPPORTED_VERSIONS


class Envelope:
    """What one 2026 request says of its client: version, capabilities, info, and the log level it asked for."""

    __slots__ = ("capabilities", "client_info", "log_level", "version")

    def __init__(self, version: str, capabilities: Any, client_info: Any, log_level: int | None) -> None:
        self.version = version
        self.capabilities: dict[str, Any] = capabilities if isinstance(capabilities, dict) else {}
        self.client_info = client_info
        self.log_level = log_level  # index into LEVELS; None: the client wants no log messages


def check_request(message: Message, headers: Mapping[bytes, bytes], raw: list[tuple[bytes, bytes]]) -> Envelope:
    """The envelope of a 2026 request whose headers agree with its body; raises the error that says what is wrong.

    `raw` are the request's header lines, where a repeated header shows. A well-formed request is
    checked here, at little cost; any other is judged by the SDK's rules, in the SDK's order: the
    envelope keys (-32602), the headers against the body (-32020), then the version (-32022), then the
    log level a client asked for (-32602).
    """
    routing = [name for name, _ in raw if name in _ROUTING]
    if len(routing) == len(set(routing)) and (envelope := _well_formed(message, headers)) is not None:
        return envelope
    text = _text_headers(raw)
    duplicated = find_duplicated_routing_header(text)
    if duplicated is not None:
        raise HeaderMismatch(f"the {duplicated} header appears more than once")
    verdict = classify_inbound_request(message, headers=dict(text), supported_modern_versions=MODERN_VERSIONS)
    if isinstance(verdict, InboundLadderRejection):
        raise rejection_error(verdict)
    meta = message["params"]["_meta"]
    level = _log_level(meta.get(LOG_LEVEL_KEY)) if LOG_LEVEL_KEY in meta else None
    return Envelope(verdict.protocol_version, verdict.client_capabilities, verdict.client_info, level)


_ROUTING: Final = frozenset({b"mcp-protocol-version", b"mcp-method", b"mcp-name"})


def _well_formed(message: Message, headers: Mapping[bytes, bytes]) -> Envelope | None:
    """The envelope of a request that passes every rule of `check_request`; None when any may fail."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or CLIENT_CAPABILITIES_KEY not in meta:
        return None
    version = meta.get(PROTOCOL_VERSION_KEY)
    level = meta.get(LOG_LEVEL_KEY, LEVELS[0])
    if version not in MODERN_VERSIONS or level not in LEVELS or _header(headers, b"mcp-protocol-version") != version:
        return None
    method = message["method"]
    if _header(headers, b"mcp-method") != method:
        return None
    name_key = NAME_BEARING_METHODS.get(method)
    if name_key is not None and (named := params.get(name_key)) is not None:  # type: ignore[union-attr]
        name = _header(headers, b"mcp-name")
        if name is None or (decode_header_value(name) if name.startswith("=?") else name) != named:
            return None
    logged = LEVELS.index(level) if LOG_LEVEL_KEY in meta else None
    return Envelope(version, meta[CLIENT_CAPABILITIES_KEY], meta.get(CLIENT_INFO_KEY), logged)


def _header(headers: Mapping[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1").strip(" \t") if value is not None else None


class ToolMarks:
    """A tool's input schema and its `x-mcp-header` marks (property path -> header token), read once per listing."""

    __slots__ = ("marks", "schema")

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        # None: no marks a client may use (none at all, or one invalid, which disqualifies the tool)
        self.marks: dict[tuple[str, ...], str] | None = None
        if isinstance(schema, dict) and find_invalid_x_mcp_header(schema) is None:
            self.marks = x_mcp_header_map(schema) or None


def check_param_headers(tool: ToolMarks | None, message: Message, headers: Mapping[bytes, bytes]) -> None:
    """Check a tools/call's `Mcp-Param-*` headers against its arguments, by the tool's `x-mcp-header` marks."""
    if tool is None or tool.marks is None:
        return  # a tool with no usable mark has no header to compare (the common case, at no cost)
    input_schema = tool.schema
    arguments = (message.get("params") or {}).get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        return  # the server says what is wrong with the arguments
    rejection = validate_mcp_param_headers(input_schema, arguments or {}, dict(_text_headers(headers.items())))
    if rejection is not None:
        raise rejection_error(rejection)


def _text_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Header names and values as text, values without the whitespace around them (RFC 9110 5.5)."""
    return [(name.decode("latin-1"), value.decode("latin-1").strip(" \t")) for name, value in headers]


def rejection_error(rejection: InboundLadderRejection) -> GatewayError:
    if rejection.code == HEADER_MISMATCH:
        return HeaderMismatch(rejection.message)
    if rejection.code == INVALID_PARAMS:
        return InvalidParams(f"Invalid params: {rejection.message}")
    data = rejection.data if isinstance(rejection.data, dict) else None
    return UnsupportedVersion(f"Unsupported protocol version: {rejection.message}", data=data)


def _log_level(value: Any) -> int:
    if value not in LEVELS:
        raise InvalidParams(f"Invalid params: {LOG_LEVEL_KEY} must be one of {', '.join(LEVELS)}", data={"got": value})
    return LEVELS.index(value)


def check_notification(headers: Mapping[bytes, bytes]) -> None:
    """A 2026 notification names a version the gateway serves, or it is told which it does."""
    version = headers.get(b"mcp-protocol-version")
    requested = version.decode("latin-1") if version is not None else None
    if requested is not None and requested not in MODERN_VERSIONS:
        raise UnsupportedVersion(
            "Unsupported protocol version", data={"supported": list(MODERN_VERSIONS), "requested": requested}
        )


def check_method(method: str) -> None:
    """A method this revision removed is 'not found' (HTTP 404)."""
    if method in REMOVED:
        raise MethodNotFound(f"Method not found: {method} was removed in MCP 2026-07-28", data={"method": method})


def to_legacy(message: Message) -> Message:
    """The request as a server of the 2025 revisions takes it: the 2026 envelope keys left out of `_meta`.

    The client's other `_meta` keys (progress token, trace context, its own) pass unchanged.
    """
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("_meta"), dict):
        return message
    meta: dict[str, Any] = params["_meta"]
    kept = {key: value for key, value in meta.items() if not key.startswith(_RESERVED_PREFIX)}
    rest = {key: value for key, value in params.items() if key != "_meta"}
    if kept:
        rest["_meta"] = kept
    return {**message, "params": rest}


def to_modern(response: Message, request: Message, server_info: Any) -> Message:
    """A 2025 server's response as a 2026 client expects it.

    Every result gets `resultType` and the answering server's info in `_meta`; the cacheable ones get
    cache hints, `ttlMs: 0` and `cacheScope: "private"` when the server gave none: a 2025 server says
    nothing of how long its lists hold, and behind a gateway with per-caller sessions a list may differ
    by caller. A missing resource (`-32002` in 2025) is `-32602`.
    """
    method = request["method"]
    uri = (request.get("params") or {}).get("uri")
    if "error" in response:
        return {**response, "error": _modern_error(response["error"], method, uri)}
    result = response["result"]
    shaped = {"resultType": "complete", **result}
    if method in CACHEABLE and shaped["resultType"] == "complete":
        shaped.setdefault("ttlMs", 0)
        shaped.setdefault("cacheScope", "private")
    meta = shaped.get("_meta")
    if server_info and (meta is None or isinstance(meta, dict)):
        shaped["_meta"] = {**(meta or {}), SERVER_INFO_KEY: server_info}
    return {**response, "result": shaped}


def _modern_error(error: dict[str, Any], method: str, uri: Any) -> dict[str, Any]:
    """A resource a 2025 server did not find, as 2026 says it: `-32602` naming the URI in `data`."""
    code = error.get("code")
    if method != "resources/read" or code not in (RESOURCE_NOT_FOUND, INVALID_PARAMS):
        return error
    data = error.get("data")
    if data is None or (isinstance(data, dict) and "uri" not in data):
        data = {**(data or {}), "uri": uri}
    return {**error, "code": INVALID_PARAMS, "data": data}


def discover_result(initialize_result: Mapping[str, Any]) -> dict[str, Any]:
    """`server/discover` for a server known by its 2025 `initialize` answer, served through the gateway.

    The gateway serves the listed versions itself whatever the server speaks; list changes reach
    2026 clients on `subscriptions/listen`.
    """
    result: dict[str, Any] = {
        "supportedVersions": list(MODERN_VERSIONS),
        "capabilities": modern_capabilities(initialize_result.get("capabilities")),
    }
    instructions = initialize_result.get("instructions")
    if isinstance(instructions, str):
        result["instructions"] = instructions
    return result


def modern_capabilities(capabilities: Any) -> dict[str, Any]:
    """Server capabilities as offered to 2026 clients: extensions kept; resource subscriptions, which the
    gateway's listen streams do not carry yet, left out."""
    offered: dict[str, Any] = {}
    for name, value in (capabilities if isinstance(capabilities, dict) else {}).items():
        if name == "resources" and isinstance(value, dict):
            value = {key: flag for key, flag in value.items() if key != "subscribe"}
        offered[name] = value
    return offered


def wants_notification(message: Message, envelope: Envelope) -> bool:
    """Whether a message related to a 2026 request goes to its client.

    Progress, yes. Log messages only at or above the level the request asked for in its `_meta`,
    whatever level the shared upstream session sends at. Nothing else travels on a request's stream.
    """
    method = message.get("method")
    if method == "notifications/progress":
        return True
    if method != "notifications/message" or envelope.log_level is None:
        return False
    level = (message.get("params") or {}).get("level")
    return level in LEVELS and LEVELS.index(level) >= envelope.log_level


# -- upstream: speaking 2026 to a server that offers it ---------------------------------------------


def speaks_modern(discovered: Mapping[str, Any]) -> bool:
    """Whether a server's discover answer offers a revision the gateway speaks."""
    versions = discovered.get("supportedVersions")
    return isinstance(versions, list) and any(version in versions for version in MODERN_VERSIONS)


def offers_modern(error: Any) -> bool:
    """Whether an error is `-32022` naming a revision the gateway speaks among the versions the server supports."""
    if not isinstance(error, dict) or error.get("code") != UNSUPPORTED_VERSION:
        return False
    data = error.get("data")
    supported = data.get("supported") if isinstance(data, dict) else None
    return isinstance(supported, list) and any(version in supported for version in MODERN_VERSIONS)


def as_initialize_result(discovered: Mapping[str, Any]) -> dict[str, Any]:
    """A 2026 server's discover answer shaped as a 2025 `initialize` result, which the rest of the gateway reads."""
    meta = discovered.get("_meta")
    info = meta.get(SERVER_INFO_KEY) if isinstance(meta, dict) else None
    result: dict[str, Any] = {
        "protocolVersion": LATEST_MODERN,
        "capabilities": discovered.get("capabilities") if isinstance(discovered.get("capabilities"), dict) else {},
        "serverInfo": info if isinstance(info, dict) else discovered.get("serverInfo") or {},
    }
    if isinstance(discovered.get("instructions"), str):
        result["instructions"] = discovered["instructions"]
    return result


def envelope_request(
    method: str, capabilities: Any, client_info: Any, params: Mapping[str, Any] | None = None
) -> Message:
    """A request of the gateway's own (a probe, a health check) with the 2026 envelope."""
    meta = {PROTOCOL_VERSION_KEY: LATEST_MODERN, CLIENT_CAPABILITIES_KEY: capabilities}
    if client_info is not None:
        meta[CLIENT_INFO_KEY] = client_info
    return {"jsonrpc": "2.0", "id": "gateway", "method": method, "params": {**(params or {}), "_meta": meta}}


def with_envelope(message: Message, capabilities: Any, client_info: Any, log_level: str | None) -> Message:
    """A client's request as a 2026 server takes it: the envelope in `_meta`, from what the client said.

    A 2026 client's own envelope is kept as it sent it; a 2025 client's comes from its `initialize`
    (capabilities and info) and its last `logging/setLevel`. The client's other `_meta` keys pass unchanged.
    """
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    meta = params.get("_meta")
    meta = meta if isinstance(meta, dict) else {}
    if PROTOCOL_VERSION_KEY in meta:
        return message
    envelope = {PROTOCOL_VERSION_KEY: LATEST_MODERN, CLIENT_CAPABILITIES_KEY: capabilities or {}}
    if client_info:
        envelope[CLIENT_INFO_KEY] = client_info
    if log_level is not None:
        envelope[LOG_LEVEL_KEY] = log_level
    return {**message, "params": {**params, "_meta": {**meta, **envelope}}}


def request_headers(message: Message, tool: ToolMarks | None = None) -> dict[str, str]:
    """The HTTP headers a 2026 request carries: version, method, the name it is about, and the marked arguments."""
    method = message["method"]
    params = message.get("params") or {}
    headers = {"MCP-Protocol-Version": LATEST_MODERN, "Mcp-Method": method}
    name_key = NAME_BEARING_METHODS.get(method)
    if name_key is not None and isinstance(params.get(name_key), str):
        name = params[name_key]
        plain = _PLAIN_NAME.fullmatch(name) and not name.startswith("=?")
        headers["Mcp-Name"] = name if plain else encode_header_value(name)
    arguments = params.get("arguments")
    if tool is not None and tool.marks is not None and isinstance(arguments, dict):
        headers.update(mcp_param_headers(tool.marks, arguments))
    return headers


def marks_valid(input_schema: Any) -> bool:
    """Whether a tool may be offered: no `x-mcp-header` mark of its schema is invalid (a schema-less tool may)."""
    return not isinstance(input_schema, dict) or find_invalid_x_mcp_header(input_schema) is None


def health_check(speaks_modern: bool) -> tuple[Message, dict[str, str] | None]:
    """The request that checks a pooled session is alive: `ping`, which 2026 removed, or `server/discover`."""
    if not speaks_modern:
        return {"jsonrpc": "2.0", "id": "health", "method": "ping"}, None
    check = envelope_request(DISCOVER, {}, None)
    return check, request_headers(check)
