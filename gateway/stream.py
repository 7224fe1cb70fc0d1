"""The events waiting to be written to one client's SSE stream, bounded in bytes.

A client that opens a stream and stops reading it must not make the gateway hold everything its
servers say from then on: each stream queues at most `limits.max_stream_buffer_bytes` of encoded
events (always at least one). What happens past that is the owner's choice: a GET stream is
closed (the client reconnects and lists again), a POST stream drops the notifications that do not
fit but never the response it exists for.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.protocol import Message, dumps


def sse_frame(data: bytes) -> bytes:
    return b"event: message\ndata: " + data + b"\n\n"


def sse_event(message: Message) -> bytes:
    """One message as a server-sent event; raises `TooDeep` for one nested beyond what can be written."""
    return sse_frame(dumps(message))


class EventStream:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.closed = False
        self.overflowed = False  # an event did not fit, at least once
        self._events: deque[bytes] = deque()
        self._size = 0
        self._ready = asyncio.Event()

    def put(self, event: bytes, *, force: bool = False) -> bool:
        """Queue `event`; False, and nothing queued, when the stream is closed or the event does not fit."""
        if self.closed:
            return False
        if not force and self._events and self._size + len(event) > self.limit:
            self.overflowed = True
            return False
        self._events.append(event)
        self._size += len(event)
        self._ready.set()
        return True

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
