"""Every pairing of eras, with the official client and real upstreams, on both endpoints.

Clients: `mode="2026-07-28"`, `"auto"` and `"legacy"`. Upstreams, over stdio and HTTP: the conformance fixture
server speaking 2026 alone and both eras (tests/servers/conformance_server.py), and server-everything, which
speaks only the 2025 revisions. Each pairing lists tools, calls one, and goes through an elicitation the
server asks for mid-call (an input-required round for a 2026 client or server, a server request between 2025 ends).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.types import ElicitRequestParams, ElicitResult

from tests.conformance.runner import free_port, minimal_env, start_server_everything_http, stop_process
from tests.support.metrics import scrape
from tests.support.paths import PY, REPO
from tests.support.processes import everything_server, start_http_upstream

pytestmark = pytest.mark.anyio

MODES = ("2026-07-28", "auto", "legacy")
UPSTREAMS = ("2026-stdio", "2026-http", "dual-stdio", "dual-http", "2025-stdio", "2025-http")


@contextmanager
def _upstream(kind: str, workdir: Any) -> Iterator[dict[str, Any]]:
    """The server config of one upstream kind, the process behind it running while in use."""
    era, transport = kind.split("-")
    if era == "2025":
        if transport == "stdio":
            yield everything_server(env=minimal_env())
            return
        port = free_port()
        everything: subprocess.Popen[bytes] = start_server_everything_http(port, workdir / "everything.log")
        try:
            yield {"url": f"http://127.0.0.1:{port}/mcp"}
        finally:
            stop_process(everything)
        return
    flags = ["--modern-only"] if era == "2026" else []
    if transport == "stdio":
        args = ["-m", "tests.servers.conformance_server", "--transport", "stdio", *flags]
        yield {"command": PY, "args": args, "cwd": str(REPO)}
        return
    upstream = start_http_upstream("--transport", "http", *flags, module="tests.servers.conformance_server")
    try:
        yield {"url": upstream.url}
    finally:
        upstream.stop()


async def _answer(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
    # What either server asks for: the fixture server a username, server-everything a name and a check box.
    content = {"username": "ada", "email": "ada@example.com", "name": "ada", "check": True}
    return ElicitResult(action="accept", content=content)


@pytest.mark.parametrize("kind", UPSTREAMS)
async def test_every_client_mode_with_this_upstream(gateway_factory: Any, tmp_path: Any, kind: str) -> None:
    conformance = not kind.startswith("2025")
    with _upstream(kind, tmp_path) as config:
        gw = gateway_factory({"up": config})
        for mode in MODES:
            for prefix, url in (("", gw.url("up")), ("up__", gw.url())):
                async with Client(url, mode=mode, elicitation_callback=_answer) as client:
                    expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
                    assert client.protocol_version == expected, (mode, url)
                    names = {tool.name for tool in (await client.list_tools()).tools}
                    if not conformance:
                        assert f"{prefix}echo" in names
                        echoed = await client.call_tool(f"{prefix}echo", {"message": "hi"})
                        assert echoed.content[0].text == "Echo: hi"  # type: ignore[union-attr]
                        # It asks mid-call: relayed to a 2025 client, held for a 2026 client's answer.
                        asked = await client.call_tool(f"{prefix}trigger-elicitation-request", {})
                        assert not asked.is_error and "ada" in str(asked.model_dump(mode="json")), (mode, url)
                        continue
                    assert f"{prefix}test_elicitation" in names
                    simple = await client.call_tool(f"{prefix}test_simple_text", {})
                    assert "simple text" in simple.content[0].text  # type: ignore[union-attr]
                    # The server needs input: a 2026 client answers an input-required result, a 2025 client
                    # is asked by the gateway on its call's stream; either way the call completes.
                    asked = await client.call_tool(f"{prefix}test_elicitation", {"message": "who?"})
                    assert not asked.is_error, (mode, url, asked)
                    assert "action=accept" in asked.content[0].text and "ada" in asked.content[0].text  # type: ignore[union-attr]
        state = gw.server("up")["protocol_version"]
        assert state == ("2025-11-25" if kind.startswith("2025") else "2026-07-28")
        rounds = scrape(gw)
        # One elicitation per client and endpoint. A 2026 server's: asked of the legacy client by the gateway,
        # passed to the others. A 2025 server's: relayed in its session to the legacy client (not a round),
        # its call held for the others.
        bridges = ("relayed", "passed", "held")
        counted = tuple(rounds.total("mcp_gateway_input_required_rounds_total", bridge=bridge) for bridge in bridges)
        assert counted == ((2, 4, 0) if conformance else (0, 0, 4))
