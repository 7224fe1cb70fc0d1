"""The gateway as the client under test of the MCP conformance suite's client scenarios.

The suite starts a mock server for a scenario and runs this module with the mock's URL as the
last argument (and `MCP_CONFORMANCE_SCENARIO`, `MCP_CONFORMANCE_CONTEXT`,
`MCP_CONFORMANCE_PROTOCOL_VERSION` in the environment). It starts a real gateway process whose one
upstream is that mock, and drives the official SDK client through `/servers/mock/mcp`: the mock
judges what the gateway sends it. For every scenario the client lists the tools and calls each one,
with the arguments the scenario's context gives or sample values for the required ones, answering
input-required rounds (elicitation) by accepting; `FEATURES` says which scenarios also read every
resource and get every prompt. On success it prints `DONE`; on failure, the reason and the tail of
the gateway's log, and exits 1. The gateway is stopped, by its pid, either way.

Run by tests/gateway/test_conformance_client.py, or by hand from the repository root:

    .tools/bin/mcp-conformance-2026 client --spec-version 2026-07-28 --scenario tools_call -o /tmp/out \\
        --command ".venv/bin/python -m tests.conformance.gateway_client"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import httpx2
import yaml
from mcp import Client, types
from mcp.client import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.inbound import find_invalid_x_mcp_header
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from tests.support.paths import PY, REPO
from tests.support.processes import free_port
from tests.support.waiting import wait_for

DONE = "gateway_client: scenario completed"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SERVER_ID = "mock"
# What a scenario's mock serves besides tools, which every scenario lists and calls.
FEATURES: dict[str, tuple[str, ...]] = {"http-standard-headers": ("resources", "prompts")}
# A value of each JSON Schema type, for a tool's required arguments and an elicitation's fields.
SAMPLE: dict[str, Any] = {"string": "x", "number": 1, "integer": 1, "boolean": True}


class ScenarioFailed(Exception):
    """The client could not do what the scenario asks of it."""


def sample_values(schema: dict[str, Any], names: list[str]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    return {name: SAMPLE[properties[name]["type"]] for name in names if properties.get(name, {}).get("type") in SAMPLE}


async def accept_elicitation(
    context: ClientRequestContext, params: types.ElicitRequestParams
) -> types.ElicitResult | types.ErrorData:
    if not isinstance(params, types.ElicitRequestFormParams):
        return types.ErrorData(code=types.INVALID_PARAMS, message="this client answers form elicitations only")
    schema = params.requested_schema
    return types.ElicitResult(action="accept", content=sample_values(schema, list(schema.get("properties", {}))))


async def refuse_invalid_tools(client: Client) -> None:
    """Fail if the gateway offers a tool whose x-mcp-header marks are invalid: as the mock's client it must
    drop it. The listing is read raw: the SDK client would drop such a tool itself, hiding the gateway's."""
    offered = await client.session.send_request(types.ListToolsRequest(), types.ListToolsResult)
    invalid = [tool.name for tool in offered.tools if find_invalid_x_mcp_header(tool.input_schema)]
    if invalid:
        raise ScenarioFailed(f"the gateway offered tools with invalid x-mcp-header marks: {invalid}")


async def call_every_tool(client: Client, context: dict[str, Any]) -> None:
    if client.protocol_version in MODERN_PROTOCOL_VERSIONS:  # before 2026-07-28 the marks mean nothing
        await refuse_invalid_tools(client)
    tools = (await client.list_tools()).tools  # through the SDK: it mirrors marked arguments as Mcp-Param-*
    given = {call["name"]: call.get("arguments", {}) for call in context.get("toolCalls", [])}
    unlisted = sorted(given.keys() - {tool.name for tool in tools})
    if unlisted:
        raise ScenarioFailed(f"the gateway did not list the scenario's tools {unlisted}")
    for tool in tools:
        required = tool.input_schema.get("required", [])
        arguments = given[tool.name] if tool.name in given else sample_values(tool.input_schema, required)
        result = await client.call_tool(tool.name, arguments)
        if result.is_error:
            raise ScenarioFailed(f"tools/call {tool.name} returned an error: {result.content}")


async def read_every_resource(client: Client, context: dict[str, Any]) -> None:
    for resource in (await client.list_resources()).resources:
        await client.read_resource(resource.uri)


async def get_every_prompt(client: Client, context: dict[str, Any]) -> None:
    for prompt in (await client.list_prompts()).prompts:
        await client.get_prompt(prompt.name)


ACTIONS: dict[str, Callable[[Client, dict[str, Any]], Awaitable[None]]] = {
    "tools": call_every_tool,
    "resources": read_every_resource,
    "prompts": get_every_prompt,
}


async def run_scenario(url: str, scenario: str, context: dict[str, Any], version: str) -> None:
    mode = version if version in MODERN_PROTOCOL_VERSIONS else "legacy"
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=60.0))
    transport = streamable_http_client(url, http_client=http)
    async with http, Client(transport, mode=mode, elicitation_callback=accept_elicitation) as client:
        for feature in ("tools", *FEATURES.get(scenario, ())):
            await ACTIONS[feature](client, context)


@contextlib.contextmanager
def gateway_in_front_of(server_url: str, workdir: Path) -> Iterator[str]:
    """A gateway process, on a free loopback port, whose one server is `server_url`; yields its MCP URL."""
    port = free_port()
    config = {
        "gateway": {"id": "conformance-client", "host": "127.0.0.1", "port": port},
        "servers": {SERVER_ID: {"url": server_url}},
    }
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    argv = [PY, "-m", "gateway", "serve", "--config", str(config_path), "--log-level", "warning"]
    with (workdir / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise ScenarioFailed(f"the gateway exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        return False

    try:
        wait_for(ready, 30, "the gateway to be ready")
        yield f"{base}/servers/{SERVER_ID}/mcp"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def describe(error: BaseException) -> str:
    """The error itself, out of the task groups (the SDK client's, anyio's) that wrap it."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m tests.conformance.gateway_client SERVER_URL", file=sys.stderr)
        return 2
    server_url = argv[-1]
    if urlsplit(server_url).hostname not in LOOPBACK:
        print(f"refusing a non-loopback server URL {server_url!r}", file=sys.stderr)
        return 2
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT", "{}"))
    version = os.environ.get("MCP_CONFORMANCE_PROTOCOL_VERSION", "2026-07-28")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the CLI's timeout: still stop the gateway
    with tempfile.TemporaryDirectory(prefix="gateway-client-") as tmp:
        workdir = Path(tmp)
        try:
            with gateway_in_front_of(server_url, workdir) as url:
                asyncio.run(run_scenario(url, scenario, context, version))
        except Exception as error:  # any failure is reported, with the gateway's side of it
            print(f"gateway_client: {scenario} failed: {describe(error)}", file=sys.stderr)
            log = (workdir / "gateway.log").read_text(errors="replace").splitlines() or ["(empty)"]
            print("--- gateway log (tail) ---", *log[-40:], sep="\n", file=sys.stderr)
            return 1
    print(DONE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
