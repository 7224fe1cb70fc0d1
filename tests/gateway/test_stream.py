"""A client stream's bound (gateway/stream.py) and how the two owners of a stream use it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.replies import PostChannel
from gateway.sessions import DownstreamSession
from gateway.stream import EventStream, sse_event

pytestmark = pytest.mark.fast


def test_a_stream_keeps_at_most_its_limit_but_always_one_event() -> None:
    stream = EventStream(limit=10, kind="GET")
    assert stream.put(b"x" * 50)  # one event always fits, however large
    assert not stream.put(b"y") and stream.overflowed
    assert stream.put(b"z" * 50, force=True)  # what must go out (a POST's answer) goes past the bound


def test_get_returns_queued_events_then_none_once_closed() -> None:
    async def scenario() -> list[bytes | None]:
        stream = EventStream(limit=100, kind="GET")
        stream.put(b"a")
        stream.put(b"b")
        stream.close()
        return [await stream.get(), await stream.get(), await stream.get()]

    assert asyncio.run(scenario()) == [b"a", b"b", None]


def test_close_with_drop_ends_at_once() -> None:
    async def scenario() -> bytes | None:
        stream = EventStream(limit=100, kind="GET")
        stream.put(b"a")
        stream.close(drop=True)
        return await stream.get()

    assert asyncio.run(scenario()) is None


def test_a_get_stream_not_read_is_closed_and_reported_once() -> None:
    overflows: list[DownstreamSession] = []

    async def scenario() -> None:
        session = DownstreamSession("id", None, "anonymous", "2025-11-25", stream_buffer=200)
        session.on_overflow = overflows.append
        stream = session.open_stream()
        note = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "x://y"}}
        results = [session.notify(note) for _ in range(10)]
        assert results[0] and not results[-1]
        assert stream.closed and await stream.get() is None

    asyncio.run(scenario())
    assert len(overflows) == 1


def test_a_post_reply_drops_notifications_that_do_not_fit_but_never_its_answer() -> None:
    sent: list[dict[str, Any]] = []
    overflows: list[bool] = []
    release = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.start":
            await release.wait()  # the client does not read until told

    async def scenario() -> None:
        session = DownstreamSession("id", None, "anonymous", "2025-11-25", stream_buffer=len(sse_event(_note(0))) * 3)
        channel = PostChannel(session, send, json_ok=True, sse_ok=True, on_overflow=lambda: overflows.append(True))
        delivered = [channel.notify(_note(n)) for n in range(10)]
        assert delivered == [True] * 3 + [False] * 7
        release.set()
        await channel.finish({"jsonrpc": "2.0", "id": 1, "result": {}})

    asyncio.run(scenario())
    bodies = b"".join(message.get("body", b"") for message in sent)
    assert bodies.count(b"notifications/progress") == 3 and b'"id":1,"result"' in bodies
    assert overflows == [True]


def _note(n: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": n}}
