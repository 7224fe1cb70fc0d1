"""`subscriptions/listen` (MCP 2026-07-28): a client's stream of change notifications.

A 2026 client has no session and no GET stream: it asks for the notifications it wants on a
long-lived POST whose SSE reply starts with `notifications/subscriptions/acknowledged` (the filter
the gateway honours), then carries each matching notification tagged with the listen request's id in
`_meta["io.modelcontextprotocol/subscriptionId"]`, and ends, when the gateway drains, with the
listen request's response. The notifications are the ones that feed 2025 GET streams: what the
servers announce (their own listen streams, for 2026 servers) and what `/mcp` announces itself.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.errors import InvalidParams
from gateway.protocol import Message
from gateway.stream import EventStream, sse_event

SUBSCRIPTION_ID_KEY: Final = "io.modelcontextprotocol/subscriptionId"
# What a client may ask for, and the notification each one means. Resource subscriptions are not
# honoured yet: the acknowledgement leaves them out, as the spec says for an unsupported type.
KINDS: Final = {
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}
ALL: Final = {kind: True for kind in KINDS}  # what the gateway asks of a 2026 server


def honoured_filter(params: dict[str, Any]) -> dict[str, bool]:
    """The part of a listen request's filter the gateway honours; raises -32602 for a malformed one."""
    wanted = params.get("notifications")
    if not isinstance(wanted, dict):
        raise InvalidParams(
            "Invalid params: subscriptions/listen needs notifications, an object naming the notifications to receive",
            data={"known": sorted([*KINDS, "resourceSubscriptions"])},
        )
    for kind in KINDS:
        if kind in wanted and not isinstance(wanted[kind], bool):
            raise InvalidParams(f"Invalid params: notifications.{kind} must be true or false")
    uris = wanted.get("resourceSubscriptions")
    if uris is not None and (not isinstance(uris, list) or not all(isinstance(uri, str) for uri in uris)):
        raise InvalidParams("Invalid params: notifications.resourceSubscriptions must be a list of URIs")
    return {kind: True for kind in KINDS if wanted.get(kind) is True}


def untagged(message: Message) -> Message | None:
    """A notification from a server's listen stream as a 2025 server would send it; None for its acknowledgement."""
    if message.get("method") == "notifications/subscriptions/acknowledged":
        return None
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or SUBSCRIPTION_ID_KEY not in meta:
        return message
    rest = {key: value for key, value in meta.items() if key != SUBSCRIPTION_ID_KEY}
    stripped = {key: value for key, value in params.items() if key != "_meta"}  # type: ignore[union-attr]
    return {**message, "params": {**stripped, **({"_meta": rest} if rest else {})}}


class Listener:
    """One open listen stream: whose it is, where (a server's endpoint, or /mcp), and what it wants."""

    def __init__(
        self, request_id: Any, scope: str | None, identity: str, honoured: dict[str, bool], stream: EventStream
    ) -> None:
        self.request_id = request_id
        self.scope = scope
        self.identity = identity
        self.honoured = honoured
        self.stream = stream
        self._methods = frozenset(KINDS[kind] for kind in honoured)

    def acknowledgement(self) -> Message:
        params = {"_meta": {SUBSCRIPTION_ID_KEY: self.request_id}, "notifications": self.honoured}
        return {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged", "params": params}

    def completion(self) -> Message:
        """The listen request's response: the stream ended because the gateway ended it."""
        result = {"resultType": "complete", "_meta": {SUBSCRIPTION_ID_KEY: self.request_id}}
        return {"jsonrpc": "2.0", "id": self.request_id, "result": result}

    def offer(self, message: Message) -> None:
        """Send `message` if it is a notification this stream asked for, tagged with its subscription id."""
        if message.get("method") in self._methods:
            params = message.get("params")
            params = params if isinstance(params, dict) else {}
            meta = params.get("_meta")
            tagged = {**(meta if isinstance(meta, dict) else {}), SUBSCRIPTION_ID_KEY: self.request_id}
            self.stream.send({"jsonrpc": "2.0", "method": message["method"], "params": {**params, "_meta": tagged}})


class Listeners:
    """Every open listen stream of the gateway."""

    def __init__(self) -> None:
        self._open: set[Listener] = set()

    def add(self, listener: Listener) -> None:
        self._open.add(listener)

    def remove(self, listener: Listener) -> None:
        self._open.discard(listener)

    def deliver(self, scopes: tuple[str | None, ...], identity: str, message: Message) -> None:
        """A notification for the streams on these endpoints; `identity` "" means every caller's."""
        for listener in list(self._open):
            if listener.scope in scopes and (not identity or listener.identity == identity):
                listener.offer(message)

    def close_all(self) -> None:
        """The gateway is draining: each stream ends with its listen request's response."""
        for listener in list(self._open):
            listener.stream.put(sse_event(listener.completion()), force=True)
            listener.stream.close()
