"""The Host and Origin rules (gateway/guard.py) and the default shares (gateway/config.py), as pure functions."""

from __future__ import annotations

import pytest

from gateway.config import GatewaySettings, fair_share
from gateway.guard import host_allowed, origin_allowed

pytestmark = pytest.mark.fast

LOOPBACK = GatewaySettings().effective_allowed_hosts() or []


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (b"http://localhost", True),
        (b"http://localhost:6274", True),
        (b"http://127.0.0.1:3000/", True),
        (b"http://localhost.evil.example", False),
        (b"http://localhost:99x", False),
        (b"https://localhost", False),  # another scheme is another origin
        (b"null", False),
    ],
)
def test_origins(origin: bytes, allowed: bool) -> None:
    assert origin_allowed(origin, GatewaySettings().allowed_origins) is allowed


def test_a_star_allows_every_origin() -> None:
    assert origin_allowed(b"https://anything.example", ["*"])


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        (b"localhost:8080", True),
        (b"127.0.0.1", True),
        (b"[::1]:8080", True),
        (b"LOCALHOST:8080", True),
        (b"evil.example", False),
        (b"127.0.0.1.evil.example:8080", False),
        (b"", False),
    ],
)
def test_hosts_on_a_loopback_bind(host: bytes, allowed: bool) -> None:
    assert host_allowed(host, LOOPBACK) is allowed


def test_a_loopback_bind_on_another_address_accepts_its_own_name() -> None:
    hosts = GatewaySettings(host="127.0.0.2").effective_allowed_hosts()
    assert hosts is not None and host_allowed(b"127.0.0.2:8080", hosts)
    assert GatewaySettings(host="0.0.0.0").effective_allowed_hosts() is None  # any, unless configured


@pytest.mark.parametrize(
    ("total", "identities", "share"), [(64, 1, 64), (64, 2, 32), (64, 3, 22), (64, 9, 16), (1, 4, 1)]
)
def test_fair_share(total: int, identities: int, share: int) -> None:
    assert fair_share(total, identities) == share
