"""The reference server `@modelcontextprotocol/server-everything`, over stdio, through the gateway.

It exercises what a thin proxy gets wrong: progress, server-to-client requests (sampling,
elicitation, roots) relayed to the client that made the call, and the child's environment.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp import types
from mcp.client.session import ClientRequestContext

from tests.conformance.runner import minimal_env
from tests.support.mcp import mcp_session
from tests.support.processes import demo_server, everything_server

pytestmark = pytest.mark.anyio

SECRET = "gateway-secret-9f2c"


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    everything = everything_server(env={**minimal_env(), "CONFIGURED_FOR_CHILD": "yes"})
    return gateway_factory(
        {"everything": everything, "demo": demo_server()},
        env={"MCP_GATEWAY_TEST_SECRET": SECRET, "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {SECRET}"},
    )


async def test_child_sees_its_configured_env_and_none_of_the_gateways(gw: Any) -> None:
    async with mcp_session(gw.url("everything")) as session:
        result = await session.call_tool("get-env", {})
    env = json.loads(result.content[0].text)  # type: ignore[union-attr]
    assert env.get("CONFIGURED_FOR_CHILD") == "yes"
    assert SECRET not in json.dumps(env)
    assert "MCP_GATEWAY_TEST_SECRET" not in env and "OTEL_EXPORTER_OTLP_HEADERS" not in env


async def test_progress_reaches_the_caller(gw: Any) -> None:
    updates: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append(progress)

    async with mcp_session(gw.url("everything")) as session:
        with anyio.fail_after(60):
            result = await session.call_tool(
                "trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress
            )
    assert not result.is_error
    assert updates == [1.0, 2.0, 3.0, 4.0]


async def test_sampling_request_is_relayed_to_the_calling_client(gw: Any) -> None:
    asked: list[types.CreateMessageRequestParams] = []

    async def sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        asked.append(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled by the client"), model="test-model"
        )

    for url in (gw.url("everything"), gw.url()):
        tool = "trigger-sampling-request" if url.endswith("everything/mcp") else "everything__trigger-sampling-request"
        async with mcp_session(url, sampling_callback=sampling) as session:
            if tool.startswith("everything__"):
                await session.list_tools()
            with anyio.fail_after(60):
                result = await session.call_tool(tool, {"prompt": "say hi", "maxTokens": 20})
        assert not result.is_error, result
        assert "sampled by the client" in result.content[0].text  # type: ignore[union-attr]
    assert len(asked) == 2


async def test_elicitation_and_roots_are_relayed(gw: Any) -> None:
    async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> Any:
        return types.ElicitResult(action="accept", content={"name": "Ada", "check": True})

    async def roots(context: ClientRequestContext) -> Any:
        return types.ListRootsResult(roots=[types.Root(uri="file:///tmp/project", name="project")])

    async with mcp_session(gw.url("everything"), elicitation_callback=elicit, list_roots_callback=roots) as session:
        with anyio.fail_after(60):
            elicited = await session.call_tool("trigger-elicitation-request", {})
            listed = await session.call_tool("get-roots-list", {})
    assert not elicited.is_error, elicited
    assert "accept" in json.dumps(elicited.model_dump(mode="json"))
    assert "file:///tmp/project" in json.dumps(listed.model_dump(mode="json")), listed


async def test_aggregate_routes_to_everything_and_demo(gw: Any) -> None:
    async with mcp_session(gw.url()) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert {"everything__echo", "everything__get-sum", "demo__add"} <= names
        total = await session.call_tool("everything__get-sum", {"a": 2, "b": 40})
        assert "42" in total.content[0].text  # type: ignore[union-attr]
        uris = {str(r.uri) for r in (await session.list_resources()).resources}
        assert "demo://readme" in uris  # the demo server's
        assert any(uri.startswith("demo://resource/static/") for uri in uris)  # server-everything's
        architecture = await session.read_resource("demo://resource/static/document/architecture.md")
        assert architecture.contents
