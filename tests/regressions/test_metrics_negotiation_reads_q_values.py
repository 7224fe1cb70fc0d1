"""`/metrics` and the MCP endpoints read Accept and Accept-Encoding as RFC 9110 does (F16).

Content negotiation tested substrings: `Accept-Encoding: gzip;q=0` (a refusal) got gzip, and so
would `Accept: application/openmetrics-text;q=0` have got OpenMetrics.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.headers import accepts_encoding, media_quality, qualities
from gateway.observability import negotiate_exposition
from tests.support.mcp import raw_initialize, rpc
from tests.support.processes import demo_server

PROMETHEUS = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "encoding", "expected"),
    [
        (None, None, (False, False)),
        ("*/*", "gzip", (False, True)),
        (PROMETHEUS, "gzip", (True, True)),
        ("application/openmetrics-text;q=0, text/plain", "gzip;q=0", (False, False)),
        ("text/plain;q=1, application/openmetrics-text;q=0.5", "*", (False, True)),
        ("application/openmetrics-text", "deflate, *;q=0", (True, False)),
        ("application/openmetrics-text", "GZIP;Q=0.5", (True, True)),
        ("application/openmetrics-text", "gzip;q=x", (True, False)),  # an unreadable q-value is a refusal
    ],
)
def test_negotiation(accept: str | None, encoding: str | None, expected: tuple[bool, bool]) -> None:
    assert negotiate_exposition(accept, encoding) == expected


def test_qualities_and_media_ranges() -> None:
    assert qualities("a/b;q=0.2, a/b;q=0.7, c/d") == {"a/b": 0.7, "c/d": 1.0}
    assert media_quality("application/*;q=0.4", "application/json") == 0.4
    assert media_quality("text/event-stream, */*;q=0", "application/json") == 0.0
    assert not accepts_encoding(None, "gzip") and accepts_encoding("br, gzip", "gzip")


def test_the_page_is_not_gzipped_when_gzip_is_refused(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_server()})
    url = gw.base + "/metrics"
    with httpx.Client() as client:
        refused = client.get(url, headers={"Accept-Encoding": "gzip;q=0"})
        allowed = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in refused.headers
    assert allowed.headers["content-encoding"] == "gzip"


def test_an_mcp_post_that_accepts_neither_json_nor_sse_is_406(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_server()})
    session_id = raw_initialize(gw, "/mcp")
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    refused = rpc(gw, "/mcp", ping, session_id, Accept="application/json;q=0, text/event-stream;q=0")
    assert refused.status_code == 406, refused.text
    assert rpc(gw, "/mcp", ping, session_id, Accept="application/json").status_code == 200
