"""MCP and JSON-RPC facts the gateway relies on: versions, methods, message shapes.

The forwarding path works on plain dicts decoded by orjson, not on SDK models: a gateway must pass
unknown fields and future revisions through untouched, and validating every message costs more
than forwarding it. Shapes are checked here just enough to route.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from gateway.errors import InvalidRequest, ParseError
from telemetry.catalog import MCP_METHODS, OTHER

LATEST_VERSION: Final = "2025-11-25"
SUPPORTED_VERSIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26")
# Revisions before this one did not send MCP-Protocol-Version on every request.
HEADER_REQUIRED_SINCE: Final = "2025-06-18"

# The closed list of MCP methods (declared with the metrics that label by it); anything else is "other".
METHODS: Final = frozenset(MCP_METHODS) - {OTHER}

Message = dict[str, Any]

dumps = orjson.dumps


def loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"Parse error: body is not valid JSON ({exc})") from None


def check_message(message: Any) -> Message:
    """Return `message` if it is a JSON-RPC 2.0 request, notification or response; else raise -32600."""
    if not isinstance(message, dict):
        raise InvalidRequest("Invalid Request: a JSON-RPC message must be a JSON object")
    if message.get("jsonrpc") != "2.0":
        raise InvalidRequest('Invalid Request: "jsonrpc" must be "2.0"')
    if "method" in message:
        if not isinstance(message["method"], str):
            raise InvalidRequest('Invalid Request: "method" must be a string')
        params = message.get("params")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequest('Invalid Request: "params" must be an object')
        if "id" in message:
            _check_id(message["id"])
        return message
    if "id" in message and ("result" in message or "error" in message):
        _check_id(message["id"])
        return message
    raise InvalidRequest("Invalid Request: neither a request, a notification nor a response")


def _check_id(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRequest('Invalid Request: "id" must be a string or an integer')


def is_request(message: Message) -> bool:
    return "method" in message and "id" in message


def is_notification(message: Message) -> bool:
    return "method" in message and "id" not in message


def error_response(request_id: Any, error: dict[str, Any]) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def result_response(request_id: Any, result: dict[str, Any]) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def negotiate(requested: Any) -> str:
    """The protocol version to answer an initialize that asked for `requested`."""
    return requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION
