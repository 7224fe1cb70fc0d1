"""Downstream MCP sessions: one per client that initialized with the gateway.

A `ClientSession` remembers what the client negotiated (protocol version, capabilities), whose it
is (identity), which endpoint it belongs to (one server, or the aggregate), and carries the
channels back to the client: the GET stream and the replies to server-to-client requests relayed
to it. The store issues ids, enforces the session limit and forgets idle sessions.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Callable
from typing import Any

from gateway.errors import GatewayError, MethodNotFound, Rejected, TooManySessions, UpstreamTimeout
from gateway.protocol import Message

# Which client capability a server-to-client request needs.
_NEEDS = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
RELAY_TIMEOUT = 300.0  # a person may be answering an elicitation

_closed_stream: Any = object()


class ClientSession:
    def __init__(self, session_id: str, scope: str | None, identity: str, protocol_version: str) -> None:
        self.id = session_id
        self.scope = scope  # a server id, or None for the aggregated endpoint
        self.identity = identity
        self.protocol_version = protocol_version
        self.capabilities: dict[str, Any] = {}
        self.created = self.last_used = time.monotonic()
        self.stream: asyncio.Queue[Any] | None = None  # the GET stream, while one is open
        self.closed = False
        self._relayed: dict[str, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)

    # -- the GET stream as a Downstream ------------------------------------------------------------

    def notify(self, message: Message) -> None:
        if self.stream is not None:
            self.stream.put_nowait(message)

    async def request(self, message: Message) -> Message:
        return await self.relay(message, self.notify if self.stream is not None else None)

    # -- server-to-client requests ---------------------------------------------------------------

    async def relay(self, message: Message, send: Callable[[Message], None] | None) -> Message:
        """Send a server-to-client request under a gateway id; await the client's answer."""
        method = message.get("method", "")
        needed = _NEEDS.get(method)
        if needed is not None and needed not in self.capabilities:
            raise MethodNotFound(f"the client did not declare the {needed!r} capability", data={"method": method})
        if send is None:
            raise MethodNotFound(f"no open stream to the client to carry {method}", data={"method": method})
        relay_id = f"gw-{next(self._ids)}"
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._relayed[relay_id] = future
        try:
            send({**message, "id": relay_id})
            async with asyncio.timeout(RELAY_TIMEOUT):
                return await future
        except TimeoutError:
            raise UpstreamTimeout(f"the client did not answer {method} within {RELAY_TIMEOUT:g}s") from None
        finally:
            self._relayed.pop(relay_id, None)

    def answer(self, message: Message) -> bool:
        """A response POSTed by the client; False if nothing awaits that id."""
        future = self._relayed.get(message.get("id"))  # type: ignore[arg-type]
        if future is None or future.done():
            return False
        future.set_result(message)
        return True

    def close(self) -> None:
        self.closed = True
        if self.stream is not None:
            self.stream.put_nowait(_closed_stream)
        for future in self._relayed.values():
            if not future.done():
                future.set_exception(Rejected("the client ended its session"))


def is_end_of_stream(item: Any) -> bool:
    return item is _closed_stream


class SessionStore:
    def __init__(
        self, max_sessions: int, idle_timeout: float, on_end: Callable[[ClientSession], None] | None = None
    ) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._on_end = on_end
        self._sessions: dict[str, ClientSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Any:
        return iter(list(self._sessions.values()))

    def create(self, scope: str | None, identity: str, protocol_version: str) -> ClientSession:
        if len(self._sessions) >= self.max_sessions:
            self.expire()
            if len(self._sessions) >= self.max_sessions:
                raise TooManySessions(f"the gateway holds its maximum of {self.max_sessions} client sessions")
        session = ClientSession(secrets.token_hex(16), scope, identity, protocol_version)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> ClientSession | None:
        return self._sessions.get(session_id)

    def end(self, session: ClientSession) -> None:
        if self._sessions.pop(session.id, None) is not None and self._on_end is not None:
            self._on_end(session)
        session.close()

    def expire(self) -> int:
        """Forget sessions idle past the timeout that hold no open stream."""
        now = time.monotonic()
        stale = [s for s in self._sessions.values() if s.stream is None and now - s.last_used > self.idle_timeout]
        for session in stale:
            self.end(session)
        return len(stale)

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            self.end(session)


__all__ = ["ClientSession", "GatewayError", "SessionStore", "is_end_of_stream"]
