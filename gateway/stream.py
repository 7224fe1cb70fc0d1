"""The events waiting to be written to one client's SSE stream, bounded in bytes.

A client that opens a stream and stops reading it must not make the gateway hold everything its
servers say from then on: each stream queues at most `limits.max_stream_buffer_bytes` of encoded
events (always at least one). What happens past that is the owner's choice: a GET stream is
closed (the client reconnects and lists again), a POST stream drops the notifications that do not
fit but never the response it exists for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from gateway.errors import TooDeep
from gateway.protocol import Message, dumps

log = logging.getLogger(__name__)


def sse_frame(data: bytes) -> bytes:
    return b"event: message\ndata: " + data + b"\n\n"


def sse_event(message: Message) -> bytes:
    """One message as a server-sent event; raises `TooDeep` for one nested beyond what can be written."""
    return sse_frame(dumps(message))


class EventStream:
    """`kind` names the stream in the log ("GET", "reply"); past `limit` the first overflow is reported
    to `on_overflow`, and a stream that `closes_on_overflow` ends at once, dropping what it held."""

    def __init__(
        self,
        limit: int,
        kind: str,
        on_overflow: Callable[[], None] | None = None,
        closes_on_overflow: bool = False,
    ) -> None:
        self.limit = limit
        self.kind = kind
        self.closed = False
        self.overflowed = False  # an event did not fit, at least once
        self._on_overflow = on_overflow
        self._closes_on_overflow = closes_on_overflow
        self._events: deque[bytes] = deque()
        self._size = 0
        self._ready = asyncio.Event()

    def send(self, message: Message) -> bool:
        """Queue `message` as an event; False when it could not be (nested too deeply, closed, or full)."""
        try:
            event = sse_event(message)
        except TooDeep:
            log.warning("a message nested too deeply for a client's %s stream was dropped: %.200r", self.kind, message)
            return False
        return self.put(event)

    def put(self, event: bytes, *, force: bool = False) -> bool:
        """Queue `event`; False, and nothing queued, when the stream is closed or the event does not fit."""
        if self.closed:
            return False
        if not force and self._events and self._size + len(event) > self.limit:
            self._overflow()
            return False
        self._events.append(event)
        self._size += len(event)
        self._ready.set()
        return True

    def _overflow(self) -> None:
        if self.overflowed:
            return
        self.overflowed = True
        done = "closed it" if self._closes_on_overflow else "dropping what does not fit"
        log.warning("a client did not read its %s stream: %s", self.kind, done)
        if self._closes_on_overflow:
            self.close(drop=True)
        if self._on_overflow is not None:
            self._on_overflow()

    async def get(self) -> bytes | None:
        """The next event; None once the stream is closed and what was queued before is written."""
        while not self._events:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        event = self._events.popleft()
        self._size -= len(event)
        return event

    def close(self, *, drop: bool = False) -> None:
        """End the stream after what is queued, or at once with `drop`."""
        self.closed = True
        if drop:
            self._events.clear()
            self._size = 0
        self._ready.set()
