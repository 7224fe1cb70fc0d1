"""An HTTP upstream's failure is described without the request's headers (F1).

The gateway built its error text from `repr()` of aiohttp's exception, and that repr carries the
request with its headers: an upstream configured with `Authorization` and an API key whose URL
redirected to itself put both secrets in the client's error, in `/servers` `last_error` and in the
log. Failures are now described in the gateway's own words.
"""

from __future__ import annotations

from typing import Any

from tests.support.mcp import initialize_error
from tests.support.processes import Upstream, free_port

SECRET = "s3cr3t-token-value"
HEADERS = {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET}


def test_a_redirect_loop_names_no_secret(gateway_factory: Any, http_raw: Upstream) -> None:
    url = http_raw.url.replace("/mcp", "/loop/mcp")
    gw = gateway_factory({"looping": {"url": url, "headers": HEADERS, "start_timeout": 5}})

    error = initialize_error(gw, "looping")
    assert "redirects" in error["message"], error
    assert SECRET not in str(error)
    assert SECRET not in str(gw.server("looping"))
    assert gw.server("looping")["last_error"]
    assert SECRET not in gw.log()


def test_a_refused_connection_names_no_secret(gateway_factory: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    gw = gateway_factory({"gone": {"url": url, "headers": HEADERS, "start_timeout": 5}})

    error = initialize_error(gw, "gone")
    assert "cannot connect to 127.0.0.1" in error["message"], error
    assert SECRET not in str(error) and SECRET not in gw.log() and SECRET not in str(gw.server("gone"))


def test_an_error_reply_quoting_the_credentials_is_redacted(gateway_factory: Any, http_raw: Upstream) -> None:
    """A server that quotes the request's credentials in its error text: the gateway does not pass them on."""
    url = http_raw.url.replace("/mcp", "/leaky/mcp")
    gw = gateway_factory({"leaky": {"url": url, "headers": HEADERS, "start_timeout": 5}})

    error = initialize_error(gw, "leaky")
    assert "HTTP 500: rejected: Authorization=*** key=***" in error["message"], error
    assert SECRET not in str(error) and SECRET not in gw.log() and SECRET not in str(gw.server("leaky"))
