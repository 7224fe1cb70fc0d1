"""A tool result of hundreds of kilobytes from an HTTP upstream reaches the client whole (F2).

The SDK's servers answer in SSE by default, and the gateway read SSE lines with aiohttp's line
reader, which fails past 2 x 256 KiB: `up__echo` with 300,000 characters was an HTTP 500. Replies
are now framed by the gateway itself, bounded only by `limits.max_upstream_message_bytes`.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from tests.support.mcp import mcp_session
from tests.support.processes import Upstream, start_http_upstream

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("size", [300_000, 3_000_000])
async def test_a_large_echo_over_sse(gateway_factory: Any, http_upstream: Upstream, size: int) -> None:
    gw = gateway_factory({"up": {"url": http_upstream.url}})
    text = "0123456789" * (size // 10)
    with anyio.fail_after(60):
        async with mcp_session(gw.url()) as client:
            result = await client.call_tool("up__echo", {"text": text})
    assert not result.is_error
    assert result.content[0].text == text  # type: ignore[union-attr]


async def test_a_large_echo_as_json(gateway_factory: Any) -> None:
    upstream = start_http_upstream("--json-response")
    try:
        gw = gateway_factory({"up": {"url": upstream.url}})
        text = "x" * 1_000_000
        with anyio.fail_after(60):
            async with mcp_session(gw.url("up")) as client:
                result = await client.call_tool("echo", {"text": text})
        assert result.content[0].text == text  # type: ignore[union-attr]
    finally:
        upstream.stop()
