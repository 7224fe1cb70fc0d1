"""MCP and JSON-RPC facts the gateway relies on: versions, methods, message shapes.

The forwarding path works on plain dicts decoded by orjson, not on SDK models: a gateway must pass
unknown fields and future revisions through untouched, and validating every message costs more
than forwarding it. Shapes are checked here just enough to route.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from gateway.errors import InvalidRequest, ParseError

LATEST_VERSION: Final = "2025-11-25"
SUPPORTED_VERSIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26")
# Revisions before this one did not send MCP-Protocol-Version on every request.
HEADER_REQUIRED_SINCE: Final = "2025-06-18"

# The closed list of MCP methods; anything else is "other" wherever it becomes a label.
METHODS: Final = frozenset(
    {
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
    }
)

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


def method_label(method: str) -> str:
    return method if method in METHODS else "other"
