"""Bounded framing of upstream byte streams: newline-delimited lines and server-sent events.

An upstream decides how much it sends, so every frame the gateway assembles has a bound
(`limits.max_upstream_message_bytes`): a frame over it is not kept in memory but reported as
`Oversized`, with its first and last bytes, so the request it answered can still be found and
failed with a clear error. The same splitter frames stdio lines and SSE lines, and it never
raises on what it is fed (aiohttp's own line reader failed at 2 x 256 KiB with an exception).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

_KEEP = 256  # bytes kept of each end of an oversized frame, to find the request id it carries

# The request id of a JSON-RPC response, at the start (`{"jsonrpc":"2.0","id":7,...`, the Python
# SDK's order) or at the end (`...,"jsonrpc":"2.0","id":7}`, the TypeScript SDK's) of a message.
_HEAD_ID = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(\d{1,18})\s*,')
_TAIL_ID = re.compile(rb',\s*"id"\s*:\s*(\d{1,18})\s*\}\s*$')


@dataclass(frozen=True, slots=True)
class Oversized:
    """A frame over the limit, dropped: its size so far and its two ends."""

    size: int
    head: bytes
    tail: bytes

    def response_id(self) -> int | None:
        """The id of the response this frame was, when either end shows it plainly."""
        match = _HEAD_ID.match(self.head) or _TAIL_ID.search(self.tail)
        return int(match.group(1)) if match else None


Frame = bytes | Oversized


class LineSplitter:
    """Splits fed chunks into `\\n`-terminated lines of at most `limit` bytes (the `\\n` dropped)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._head: bytes | None = None  # set once the current line went over the limit
        self._tail = b""

    def feed(self, chunk: bytes) -> list[Frame]:
        lines: list[Frame] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._add(chunk[start:end])
            lines.append(self._take())
            start = end + 1
        if start < len(chunk):
            self._add(chunk[start:])
        return lines

    def finish(self) -> Frame | None:
        """The last line when the stream ended without a newline, if anything is left."""
        return self._take() if self._size else None

    def _add(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._head is not None:
            self._tail = (self._tail + piece)[-_KEEP:]
            return
        self._parts.append(piece)
        if self._size > self.limit:
            line = b"".join(self._parts)
            self._head, self._tail, self._parts = line[:_KEEP], line[-_KEEP:], []

    def _take(self) -> Frame:
        frame: Frame
        if self._head is not None:
            frame = Oversized(self._size, self._head, self._tail)
        else:
            frame = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts, self._size, self._head, self._tail = [], 0, None, b""
        return frame


async def sse_data(chunks: AsyncIterable[bytes], limit: int) -> AsyncIterator[Frame]:
    """The `data` of each server-sent event (its lines joined by `\\n`, per the SSE spec), bounded."""
    splitter = LineSplitter(limit)
    event = _Event(limit)
    async for chunk in chunks:
        for line in splitter.feed(chunk):
            if (data := event.add(line)) is not None:
                yield data
    last = splitter.finish()
    if last is not None:
        event.add(last)
    if (data := event.add(b"")) is not None:
        yield data


class _Event:
    """The data lines of the event being read; other fields (event, id, retry, comments) are skipped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data: list[bytes] = []
        self._size = 0
        self._oversized: Oversized | None = None

    def add(self, line: Any) -> Frame | None:
        """Take one line; at the blank line that ends an event, return that event's data."""
        if isinstance(line, Oversized):
            self._oversized = self._oversized or line
            return None
        line = line.removesuffix(b"\r")
        if not line:
            return self._take()
        if not line.startswith(b"data:"):
            return None
        value = line[5:].removeprefix(b" ")
        self._size += len(value) + 1
        if self._size > self.limit:
            self._oversized = self._oversized or Oversized(self._size, b"\n".join(self._data)[:_KEEP], value[-_KEEP:])
            self._data = []
        elif self._oversized is None:
            self._data.append(value)
        return None

    def _take(self) -> Frame | None:
        oversized, data = self._oversized, self._data
        self._oversized, self._data, self._size = None, [], 0
        if oversized is not None:
            return oversized
        if not data:
            return None
        return data[0] if len(data) == 1 else b"\n".join(data)
