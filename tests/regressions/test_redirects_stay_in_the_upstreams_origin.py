"""An upstream's redirect is followed only within its origin: credentials never go elsewhere (F8).

aiohttp follows redirects by default and drops `Authorization` on a new origin, but not custom
headers: an upstream answering `307 Location: http://localhost:Q/steal` got the configured
`X-Api-Key` sent there. Now a redirect to another origin is refused with an error that says so,
and one within the origin (e.g. `/mcp` -> `/mcp/`) still works.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from tests.support.mcp import initialize_error, mcp_session
from tests.support.processes import Upstream

pytestmark = pytest.mark.anyio

HEADERS = {"Authorization": "Bearer redirect-secret", "X-Api-Key": "redirect-secret"}


def _stolen(upstream: Upstream) -> list[dict[str, str]]:
    stolen: list[dict[str, str]] = httpx.get(upstream.url.replace("/mcp", "/stolen"), timeout=10).json()
    return stolen


def test_a_redirect_to_another_origin_is_not_followed(gateway_factory: Any, http_raw: Upstream) -> None:
    url = http_raw.url.replace("/mcp", "/away/mcp")  # 307 to http://localhost:<port>/steal
    gw = gateway_factory({"away": {"url": url, "headers": HEADERS, "start_timeout": 5}})

    error = initialize_error(gw, "away")
    assert "redirect to another origin (http://localhost:" in error["message"], error
    assert _stolen(http_raw) == []  # nothing reached the other origin: no key, no request at all
    assert "redirect-secret" not in gw.log()


async def test_a_redirect_within_the_origin_is_followed(gateway_factory: Any, http_raw: Upstream) -> None:
    url = http_raw.url.replace("/mcp", "/moved/mcp")  # 308 to /mcp on the same host and port
    gw = gateway_factory({"moved": {"url": url, "headers": HEADERS}})
    with anyio.fail_after(30):
        async with mcp_session(gw.url("moved")) as client:
            result = await client.call_tool("echo", {"text": "arrived"})
    assert result.content[0].text == "arrived"  # type: ignore[union-attr]
