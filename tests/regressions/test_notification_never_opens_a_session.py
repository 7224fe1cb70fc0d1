"""A client notification goes to the caller's live upstream sessions; it never opens or waits for one.

It used to take a session from the pool like a request: when the pool could not give one (the
session failed its health check and the upstream was down, or every session was busy), the
pool's error escaped the endpoint as an HTTP 500 with a traceback in the log, after waiting up to
`acquire_timeout` when the sessions were busy, and opening a session just to notify it.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
import pytest

from tests.support.mcp import raw_initialize, rpc, while_sleeping
from tests.support.metrics import scrape
from tests.support.processes import Gateway, Upstream, start_http_upstream
from tests.support.waiting import eventually, wait_for

pytestmark = pytest.mark.anyio

LIST_CHANGED = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}


def _pooled(gw: Gateway) -> list[dict[str, Any]]:
    sessions: list[dict[str, Any]] = gw.get("/servers/remote/sessions").json()["sessions"]
    return sessions


def _misses(gw: Gateway) -> float:
    return scrape(gw).total("mcp_session_pool_misses_total", server_id="remote")


def test_notification_with_the_upstream_down_is_accepted(gateway_factory: Any) -> None:
    upstream = start_http_upstream("--name", "remote")
    try:
        pool = {"health_check_interval": 0.5, "health_check_timeout": 0.5}
        gw = gateway_factory({"remote": {"url": upstream.url, "protocol": "2025", "pool": pool}})
        session_id = raw_initialize(gw, "/servers/remote/mcp")
        wait_for(lambda: _pooled(gw)[0]["idle_seconds"] > 0.5, what="the session to be due a health check")
        upstream.stop()

        response = rpc(gw, "/servers/remote/mcp", LIST_CHANGED, session_id)
        assert response.status_code == 202, response.text
        assert _misses(gw) == 1  # no session was opened for it
        assert "Traceback" not in gw.log()
    finally:
        upstream.stop()


async def test_notification_while_every_session_is_busy_is_accepted_at_once(
    gateway_factory: Any, http_upstream: Upstream
) -> None:
    pool = {"max_sessions_per_key": 1, "max_requests_per_session": 1, "acquire_timeout": 60}
    gw = gateway_factory({"remote": {"url": http_upstream.url, "protocol": "2025", "pool": pool}})
    session_id = raw_initialize(gw, "/servers/remote/mcp")

    async def notify() -> None:
        await eventually(lambda: anyio.to_thread.run_sync(lambda: _pooled(gw)[0]["in_use"] == 1))
        response = await anyio.to_thread.run_sync(lambda: rpc(gw, "/servers/remote/mcp", LIST_CHANGED, session_id))
        assert response.status_code == 202, response.text
        assert _pooled(gw)[0]["in_use"] == 1  # answered while the call still holds the only session

    with anyio.fail_after(60):
        await while_sleeping(gw, [("/servers/remote/mcp", "sleep")], notify)
