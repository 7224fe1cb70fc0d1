"""JSON-RPC shapes (gateway/protocol.py) as pure functions: what is a message, what is a valid response."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest, ParseError, TooDeep
from gateway.protocol import check_message, dumps, is_valid_id, loads, negotiate, response_problem

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": {}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 3, "result": {}},
        {"jsonrpc": "2.0", "id": 3, "error": {"code": 1, "message": "x"}},
    ],
)
def test_messages(message: dict[str, Any]) -> None:
    assert check_message(message) is message


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ([], "must be a JSON object"),
        ({"id": 1, "method": "ping"}, '"jsonrpc" must be "2.0"'),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, '"method" must be a string'),
        ({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]}, '"params" must be an object'),
        ({"jsonrpc": "2.0", "id": True, "method": "x"}, '"id" must be a string or an integer'),
        ({"jsonrpc": "2.0", "id": [1], "result": {}}, '"id" must be a string or an integer'),
        ({"jsonrpc": "2.0", "id": 1}, "neither a request, a notification nor a response"),
    ],
)
def test_not_messages(message: Any, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        check_message(message)


def test_ids() -> None:
    assert is_valid_id(0) and is_valid_id("x") and not is_valid_id(None) and not is_valid_id(False)


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        ({"id": 1, "result": {}}, None),
        ({"id": 1, "error": {"code": -1, "message": "m", "data": [1]}}, None),
        ({"id": 1, "result": "text"}, '"result" is not an object'),
        ({"id": 1, "error": "boom"}, '"error" is not an object'),
        ({"id": 1, "error": {"code": True, "message": "m"}}, '"error.code" is not an integer'),
        ({"id": 1, "error": {"code": 1}}, '"error.message" is not a string'),
        ({"id": 1}, 'it has neither "result" nor "error"'),
    ],
)
def test_what_an_upstream_response_may_be(response: dict[str, Any], problem: str | None) -> None:
    assert response_problem(response) == problem


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_dumps_writes_past_orjsons_depth_and_refuses_beyond_recursion() -> None:
    assert json.loads(dumps(_nested(300))) == _nested(300)  # orjson stops at 254; the fallback goes on
    assert dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    with pytest.raises(TooDeep):
        dumps(_nested(5000))


def test_loads_names_the_parse_error() -> None:
    with pytest.raises(ParseError, match="not valid JSON"):
        loads(b"{nope")


@pytest.mark.parametrize(
    ("asked", "answered"), [("2025-06-18", "2025-06-18"), ("1999-01-01", "2025-11-25"), (7, "2025-11-25")]
)
def test_version_negotiation(asked: Any, answered: str) -> None:
    assert negotiate(asked) == answered
