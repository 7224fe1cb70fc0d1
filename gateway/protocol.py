"""MCP and JSON-RPC facts the gateway relies on: versions, methods, message shapes.

The forwarding path works on plain dicts decoded by orjson, not on SDK models: a gateway must pass
unknown fields and future revisions through untouched, and validating every message costs more
than forwarding it. Shapes are checked here just enough to route.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

from gateway.errors import InvalidRequest, ParseError, TooDeep
from telemetry.catalog import MCP_METHODS, OTHER

LATEST_VERSION: Final = "2025-11-25"
SUPPORTED_VERSIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26")
# Revisions before this one did not send MCP-Protocol-Version on every request.
HEADER_REQUIRED_SINCE: Final = "2025-06-18"

# The closed list of MCP methods (declared with the metrics that label by it); anything else is "other".
METHODS: Final = frozenset(MCP_METHODS) - {OTHER}

Message = dict[str, Any]


def dumps(message: Any) -> bytes:
    """`message` as compact JSON; raises `TooDeep` when it is nested too deeply to be written.

    orjson writes 254 levels but reads 1,024, so what a client or a server sent can be beyond it:
    the standard library's encoder takes over there (to about 900 levels, Python's recursion limit).
    """
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError:
        try:
            return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        except RecursionError:
            raise TooDeep("Invalid params: the message is nested too deeply to be passed on") from None


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
    if not is_valid_id(value):
        raise InvalidRequest('Invalid Request: "id" must be a string or an integer')


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def response_problem(message: Message) -> str | None:
    """What is wrong with a JSON-RPC response from an upstream, or None when it can be passed on."""
    if "error" in message:
        error = message["error"]
        if not isinstance(error, dict):
            return '"error" is not an object'
        if not isinstance(error.get("code"), int) or isinstance(error.get("code"), bool):
            return '"error.code" is not an integer'
        if not isinstance(error.get("message"), str):
            return '"error.message" is not a string'
        return None
    if "result" not in message:
        return 'it has neither "result" nor "error"'
    if not isinstance(message["result"], dict):
        return '"result" is not an object'
    return None


def is_request(message: Message) -> bool:
    return "method" in message and "id" in message


def error_response(request_id: Any, error: dict[str, Any]) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def result_response(request_id: Any, result: dict[str, Any]) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def negotiate(requested: Any) -> str:
    """The protocol version to answer an initialize that asked for `requested`."""
    return requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION
