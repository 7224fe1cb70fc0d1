"""How `/mcp` routes a call to its server (gateway/aggregate.py), with no server running."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.aggregate import AggregateLimits, Aggregator, decode_cursor, encode_cursor, template_pattern
from gateway.config import parse_config
from gateway.errors import InvalidParams, MethodNotFound, NotFound, ResourceNotFound
from gateway.events import NullObserver
from gateway.forward import Forwarder
from gateway.pool import SessionPool
from gateway.runtime import build_runtime

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("template", "uri", "matches"),
    [
        ("demo://echo/{text}", "demo://echo/hello", True),
        ("demo://echo/{text}", "demo://echo/a/b", False),  # a simple expansion stops at "/"
        ("file:///{+path}", "file:///a/b/c.txt", True),  # a reserved expansion does not
        ("demo://echo/{text}", "demo://echo/", False),
        ("a.b://{x}?q", "aXb://1?q", False),  # the template's literals are literal, dots included
        ("res://{a}/{b}", "res://1/2", True),
    ],
)
def test_uri_templates(template: str, uri: str, matches: bool) -> None:
    assert bool(template_pattern(template).match(uri)) is matches


@pytest.mark.parametrize("offset", [0, 1, 500, 10**9])
def test_cursors_round_trip(offset: int) -> None:
    assert decode_cursor(encode_cursor(offset)) == offset


@pytest.mark.parametrize("cursor", ["nope", 5, [], encode_cursor(0)[:-3] + "!!!", "eyJvIjotMX0="])  # {"o":-1}
def test_bad_cursors_are_invalid_params(cursor: Any) -> None:
    with pytest.raises(InvalidParams):
        decode_cursor(cursor)


@pytest.fixture
def aggregator() -> Aggregator:
    config = parse_config({"servers": {"demo": {"command": "true"}, "web": {"url": "http://127.0.0.1:9/mcp"}}})
    observer = NullObserver()
    servers = {sid: build_runtime(sid, server, observer, lambda *_: None) for sid, server in config.servers.items()}
    forwarder = Forwarder(SessionPool(observer), observer)
    return Aggregator(servers, forwarder, observer, AggregateLimits(500, 5.0), lambda *_: None)


def test_namespaced_names_route_to_their_server(aggregator: Aggregator) -> None:
    runtime, params = aggregator.route("tools/call", {"name": "web__fetch__deep", "arguments": {}})
    assert runtime.id == "web" and params == {"name": "fetch__deep", "arguments": {}}  # the first "__" splits
    runtime, params = aggregator.route("completion/complete", {"ref": {"type": "ref/prompt", "name": "demo__greet"}})
    assert runtime.id == "demo" and params["ref"]["name"] == "greet"


@pytest.mark.parametrize(
    ("method", "params", "error"),
    [
        ("tools/call", {"name": "nope__x"}, NotFound),
        ("tools/call", {"name": "demo"}, NotFound),
        ("tools/call", {"name": "demo__"}, NotFound),
        ("tools/call", {"name": 5}, InvalidParams),
        ("prompts/get", {}, InvalidParams),
        ("resources/read", {"uri": "x://unknown"}, ResourceNotFound),
        ("resources/read", {"uri": 1}, InvalidParams),
        ("completion/complete", {"ref": "x"}, InvalidParams),
        ("completion/complete", {"ref": {"type": "ref/other"}}, InvalidParams),
        ("sampling/createMessage", {}, MethodNotFound),
    ],
)
def test_what_cannot_be_routed(aggregator: Aggregator, method: str, params: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        aggregator.route(method, params)
