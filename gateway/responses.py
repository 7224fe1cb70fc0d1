"""Answers outside JSON-RPC: an HTTP status with a JSON body that says what was wrong, and the raw
ASGI sends that carry every answer. MCP endpoints shape theirs as JSON-RPC errors (with the request's
id when it could be read), so an MCP client shows the message; the operations routes send `{"error": ...}`.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import INVALID_REQUEST
from gateway.protocol import dumps, error_response

Scope = dict[str, Any]
Receive = Any
Send = Any

JSON = [(b"content-type", b"application/json")]


class HttpError(Exception):
    """An answer outside JSON-RPC: an HTTP status with a JSON body that says what was wrong."""

    def __init__(
        self,
        status: int,
        message: str,
        extra: dict[str, Any] | None = None,
        headers: Any = None,
        rejection: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **(extra or {})}
        self.headers: list[tuple[bytes, bytes]] = headers or []
        self.rejection = rejection  # an `events.Rejection` reason, when a limit or a check refused
        self.request_id: Any = None  # the id of the JSON-RPC request it answers, when one could be read


async def send_body(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_http_error(send: Send, error: HttpError) -> None:
    """An MCP endpoint's HTTP error, shaped as a JSON-RPC error so MCP clients show its message."""
    body: dict[str, Any] = {"code": INVALID_REQUEST, "message": error.body["error"]}
    if len(error.body) > 1:
        body["data"] = {k: v for k, v in error.body.items() if k != "error"}
    await send_body(send, error.status, dumps(error_response(error.request_id, body)), [*JSON, *error.headers])


async def send_json_error(send: Send, error: HttpError) -> None:
    """An operations route's HTTP error: `{"error": message, ...}`."""
    await send_body(send, error.status, dumps(error.body), [*JSON, *error.headers])
