"""The bounded framing of upstream bytes (gateway/upstream/framing.py), on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.framing import LineSplitter, Oversized, sse_data

pytestmark = pytest.mark.fast


def _split(chunks: list[bytes], limit: int) -> list[bytes | Oversized]:
    splitter = LineSplitter(limit)
    frames = [frame for chunk in chunks for frame in splitter.feed(chunk)]
    last = splitter.finish()
    return frames + ([last] if last is not None else [])


@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=8), st.integers(1, 30))
def test_lines_come_out_whole_however_the_bytes_are_chunked(lines: list[bytes], cut: int) -> None:
    data = b"".join(line + b"\n" for line in lines)
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]
    assert _split(chunks, limit=1000) == lines


def test_a_line_over_the_limit_is_reported_with_its_ends_not_kept() -> None:
    frames = _split([b'{"jsonrpc":"2.0","id":42,"result":{"text":"', b"x" * 5000, b'"}}\nnext\n'], limit=1000)
    assert len(frames) == 2 and frames[1] == b"next"
    oversized = frames[0]
    assert isinstance(oversized, Oversized) and oversized.size > 5000
    assert len(oversized.head) <= 256 and len(oversized.tail) <= 256
    assert oversized.response_id() == 42


def test_the_response_id_is_found_at_either_end_or_not_at_all() -> None:
    assert Oversized(9, b"", b'..."jsonrpc":"2.0","id":7}').response_id() == 7  # the TypeScript SDK's key order
    assert Oversized(9, b'{"result":{"id":3', b"...}").response_id() is None  # a nested "id" is not the id
    assert Oversized(9, b'{"id":"text"', b"").response_id() is None  # the gateway's ids are integers


def _sse(*chunks: bytes, limit: int = 1000) -> list[bytes | Oversized]:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def collect() -> list[bytes | Oversized]:
        return [data async for data in sse_data(source(), limit)]

    return asyncio.run(collect())


def test_sse_events_join_their_data_lines_and_skip_other_fields() -> None:
    stream = b'event: message\r\nid: 1\r\ndata: {"a":\r\ndata: 1}\r\n\r\n: keepalive\n\ndata:x\n\n'
    assert _sse(stream[:7], stream[7:30], stream[30:]) == [b'{"a":\n1}', b"x"]


def test_an_sse_event_over_the_limit_is_oversized_and_the_next_one_is_whole() -> None:
    big = b"data: " + b"y" * 3000 + b"\n\n"
    frames = _sse(big, b"data: small\n\n", limit=1000)
    assert isinstance(frames[0], Oversized) and frames[1] == b"small"
    many_lines = b"".join(b"data: " + b"z" * 300 + b"\n" for _ in range(5)) + b"\n"
    assert isinstance(_sse(many_lines, limit=1000)[0], Oversized)  # each line fits; the event does not


def test_a_stream_cut_mid_event_yields_what_it_had() -> None:
    assert _sse(b"data: last") == [b"last"]
