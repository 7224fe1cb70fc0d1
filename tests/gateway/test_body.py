"""Reading a request body under its limit (gateway/transport.py), against a scripted ASGI `receive`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.replies import read_body
from gateway.responses import HttpError

pytestmark = pytest.mark.fast


def _read(events: list[dict[str, Any]], headers: dict[bytes, bytes], limit: int = 10) -> bytes:
    pending = list(events)

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    return asyncio.run(read_body(receive, headers, limit))


def _chunk(body: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


def test_a_body_in_chunks_is_joined() -> None:
    assert _read([_chunk(b"ab", True), _chunk(b"cd", True), _chunk(b"")], {}) == b"abcd"


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    with pytest.raises(HttpError) as refused:
        _read([], {b"content-length": b"11"})
    assert refused.value.status == 413 and refused.value.rejection == "body_too_large"


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives() -> None:
    with pytest.raises(HttpError) as refused:
        _read([_chunk(b"x" * 6, True), _chunk(b"x" * 6, True)], {})
    assert refused.value.status == 413


def test_a_client_that_leaves_midway_gets_a_400() -> None:
    with pytest.raises(HttpError) as refused:
        _read([_chunk(b"ab", True), {"type": "http.disconnect"}], {})
    assert refused.value.status == 400 and "disconnected" in str(refused.value)
