"""Shared fixtures: real gateways and real upstream servers on free loopback ports.

Every process a test starts binds 127.0.0.1 and is stopped by the test, by its pid. Waits are
conditions polled under a deadline, never fixed sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Gateway, Upstream, start_gateway, start_http_upstream, stop_gateway


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def factory(servers: dict[str, Any], gateway: dict[str, Any] | None = None, **kw: Any) -> Gateway:
        gw = start_gateway(tmp_path, servers, gateway, **kw)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        stop_gateway(gw)


@pytest.fixture
def http_upstream() -> Iterator[Upstream]:
    upstream = start_http_upstream("--name", "remote")
    yield upstream
    upstream.stop()


@pytest.fixture
def http_raw() -> Iterator[Upstream]:
    """tests/servers/http_raw.py: a hand-written HTTP upstream that sends exactly what a test asks for."""
    upstream = start_http_upstream(module="tests.servers.http_raw")
    yield upstream
    upstream.stop()
