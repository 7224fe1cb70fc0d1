"""Downstream MCP sessions: one per client that initialized with the gateway.

A `DownstreamSession` remembers what the client negotiated (protocol version, capabilities), whose it
is (identity), which endpoint it belongs to (one server, or the aggregate), and carries the
channels back to the client: the GET stream and the replies to server-to-client requests relayed
to it. The store issues ids, enforces the session limit and forgets idle sessions.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import MethodNotFound, Rejected, SessionQuota, TooManySessions, UpstreamTimeout
from gateway.protocol import Message
from gateway.stream import EventStream

# Which client capability a server-to-client request needs.
_NEEDS = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
RELAY_TIMEOUT = 300.0  # a person may be answering an elicitation


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_sessions: int  # client sessions at once, all callers
    per_identity: int  # client sessions one caller may hold
    idle_timeout: float  # seconds unused before a session is forgotten
    stream_buffer: int  # bytes queued for a GET stream the client does not read


class DownstreamSession:
    def __init__(
        self, session_id: str, scope: str | None, identity: str, protocol_version: str, stream_buffer: int
    ) -> None:
        self.id = session_id
        self.scope = scope  # a server id, or None for the aggregated endpoint
        self.identity = identity
        self.protocol_version = protocol_version
        self.capabilities: dict[str, Any] = {}
        self.client_info: Any = None  # what the client said it is (initialize, or a 2026 request's envelope)
        self.log_level: str | None = None  # the level of its last logging/setLevel; a 2026 request carries its own
        self.created = self.last_used = time.monotonic()
        self.stream: EventStream | None = None  # the GET stream, while one is open
        self.stream_buffer = stream_buffer
        self.on_overflow: Callable[[DownstreamSession], None] | None = None
        self.closed = False
        self._relayed: dict[str, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)

    # -- the GET stream as a ClientChannel -------------------------------------------------------

    def open_stream(self) -> EventStream:
        self.stream = EventStream(self.stream_buffer, "GET", self._overflowed, closes_on_overflow=True)
        return self.stream

    def _overflowed(self) -> None:
        if self.on_overflow is not None:
            self.on_overflow(self)

    def notify(self, message: Message) -> bool:
        """Queue `message` on the GET stream; False when there is none, or it was closed for not being read."""
        return self.stream is not None and self.stream.send(message)

    async def request(self, message: Message) -> Message:
        return await self.relay(message, self.notify if self.stream is not None else None)

    # -- server-to-client requests ---------------------------------------------------------------

    async def relay(self, message: Message, send: Callable[[Message], bool] | None) -> Message:
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
            if not send({**message, "id": relay_id}):
                raise MethodNotFound(f"the client's stream could not carry {method}", data={"method": method})
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
            self.stream.close()
        for future in self._relayed.values():
            if not future.done():
                future.set_exception(Rejected("the client ended its session"))


class SessionStore:
    def __init__(
        self,
        limits: SessionLimits,
        on_end: Callable[[DownstreamSession], None] | None = None,
        on_overflow: Callable[[DownstreamSession], None] | None = None,
    ) -> None:
        self.limits = limits
        self._on_end = on_end
        self._on_overflow = on_overflow
        self._sessions: dict[str, DownstreamSession] = {}
        self._held: Counter[str] = Counter()  # sessions per identity

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Any:
        return iter(list(self._sessions.values()))

    def create(self, scope: str | None, identity: str, protocol_version: str) -> DownstreamSession:
        """A new session; refused when the gateway, or this caller, holds its maximum (idle ones expire first)."""
        limits = self.limits
        if len(self._sessions) >= limits.max_sessions or self._held[identity] >= limits.per_identity:
            self.expire()
        if self._held[identity] >= limits.per_identity:
            raise SessionQuota(
                f"this caller holds its maximum of {limits.per_identity} client sessions: end one (DELETE) "
                f"or let one stay unused for {limits.idle_timeout:g}s",
                data={"reason": "identity_sessions", "limit": limits.per_identity},
            )
        if len(self._sessions) >= limits.max_sessions:
            raise TooManySessions(
                f"the gateway holds its maximum of {limits.max_sessions} client sessions",
                data={"reason": "session_limit", "limit": limits.max_sessions},
            )
        session = DownstreamSession(secrets.token_hex(16), scope, identity, protocol_version, limits.stream_buffer)
        session.on_overflow = self._on_overflow
        self._sessions[session.id] = session
        self._held[identity] += 1
        return session

    def get(self, session_id: str) -> DownstreamSession | None:
        return self._sessions.get(session_id)

    def end(self, session: DownstreamSession) -> None:
        if self._sessions.pop(session.id, None) is not None:
            self._held[session.identity] -= 1
            if not self._held[session.identity]:
                del self._held[session.identity]
            if self._on_end is not None:
                self._on_end(session)
        session.close()

    def expire(self) -> int:
        """Forget sessions idle past the timeout that hold no open stream."""
        now = time.monotonic()
        timeout = self.limits.idle_timeout
        stale = [s for s in self._sessions.values() if s.stream is None and now - s.last_used > timeout]
        for session in stale:
            self.end(session)
        return len(stale)

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            self.end(session)
