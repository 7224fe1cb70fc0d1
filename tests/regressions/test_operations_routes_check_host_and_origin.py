"""The operations routes refuse what a browser could be tricked into sending, like `/mcp` does (F7).

With the default config, `POST /servers/demo/stop` with `Origin: https://evil.example` (a form post
from any page the operator opens) stopped the server, and `GET /servers` and `/metrics` answered a
`Host: evil.example` (DNS rebinding reads them). Every route but the health probes now checks Host
and Origin, the operations routes take no form posts, and each refusal is counted.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.mcp import error_message
from tests.support.metrics import scrape
from tests.support.processes import Gateway, demo_server

EVIL_ORIGIN = {"Origin": "https://evil.example"}
EVIL_HOST = {"Host": "evil.example"}


@pytest.fixture
def gw(gateway_factory: Any) -> Gateway:
    gateway: Gateway = gateway_factory({"demo": demo_server(lazy=False)})
    return gateway


@pytest.mark.parametrize("path", ["/servers/demo/stop", "/servers/demo/restart"])
def test_a_cross_site_admin_post_is_refused(gw: Gateway, path: str) -> None:
    pid = gw.server("demo")["pid"]
    response = gw.post(path, headers=EVIL_ORIGIN)
    assert response.status_code == 403 and "origin 'https://evil.example' is not allowed" in error_message(response)
    form = gw.post(path, content=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and "cross-site" in error_message(form)
    text = gw.post(path, content=b"x", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415
    assert gw.server("demo")["state"] == "running" and gw.server("demo")["pid"] == pid
    assert gw.delete_sessions(headers=EVIL_ORIGIN).status_code == 403


@pytest.mark.parametrize("path", ["/servers", "/metrics", "/servers/demo/sessions"])
def test_a_rebound_host_reads_nothing(gw: Gateway, path: str) -> None:
    response = gw.get(path, headers=EVIL_HOST)
    assert response.status_code == 421 and "DNS rebinding" in error_message(response)
    assert gw.get(path).status_code == 200


def test_probes_answer_any_host_and_refusals_are_counted(gw: Gateway) -> None:
    assert gw.get("/healthz", headers=EVIL_HOST).status_code == 200
    assert gw.get("/readyz", headers=EVIL_HOST).status_code == 200
    gw.get("/servers", headers=EVIL_HOST)
    gw.post("/servers/demo/stop", headers=EVIL_ORIGIN)
    gw.post("/servers/demo/stop", content=b"x", headers={"Content-Type": "text/plain"})
    metrics = scrape(gw)
    for reason in ("host", "origin", "cross_site"):
        assert metrics.value("mcp_gateway_rejections_total", server_id="_gateway", reason=reason) == 1, reason


def test_admin_actions_still_work_without_a_body_or_with_json(gw: Gateway) -> None:
    assert gw.post("/servers/demo/restart").status_code == 200
    assert gw.post("/servers/demo/stop", json={}).status_code == 200
    assert gw.server("demo")["state"] == "stopped"
