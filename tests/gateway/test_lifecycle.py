"""Server lifecycles end to end: crashes, restarts, idle and lazy starts, admin routes, shutdown.

Every test runs a real `mcp-gateway serve` with real stdio servers and kills, stops or starves them
for real; what a client sees is checked through the official MCP client (or raw HTTP where the
exact exchange matters), what the gateway thinks through `/servers`, what the OS sees through psutil.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
from typing import Any

import anyio
import httpx
import psutil
import pytest
from mcp.shared.exceptions import MCPError
from starlette.testclient import TestClient

from gateway.app import Gateway as AppGateway
from gateway.app import create_app
from gateway.config import parse_config
from tests.support.mcp import call_outcome, initialize_error, mcp_session, raw_initialize
from tests.support.metrics import scrape
from tests.support.paths import PY
from tests.support.processes import FAST_RESTART, Gateway, demo_server, demo_with_helper, misbehaving_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


def _text(result: Any) -> str:
    return str(result.content[0].text)


def _restarted(gw: Gateway, times: int) -> bool:
    info = gw.server("odd")
    return bool(info["state"] == "running" and info["restarts"] == times)


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        return _alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def started_pids(gw: Gateway, server: str) -> list[int]:
    """The pids the gateway has logged starting `server` with, in order."""
    return [int(pid) for pid in re.findall(rf"server {server} running \(pid (\d+)", gw.log())]


def _group(pgid: int) -> list[psutil.Process]:
    """Live processes in one process group (a stdio server runs in a group of its own)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and _alive(proc):
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def survivors(procs: list[psutil.Process], timeout: float = 15.0) -> list[psutil.Process]:
    """The processes still alive after `timeout`; they are killed so a failing test leaks nothing."""
    psutil.wait_procs(procs, timeout=timeout)
    alive = [proc for proc in procs if _alive(proc)]
    for proc in alive:
        proc.kill()
    return alive


async def stop_gateway(gw: Gateway) -> None:
    """SIGTERM the gateway and wait for it to exit, without blocking the clients' event loop."""
    await anyio.to_thread.run_sync(gw.stop)


# -- crashes and restarts ------------------------------------------------------------------------


async def test_killed_upstream_fails_its_call_and_restarts(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_with_helper(lazy=False, restart=FAST_RESTART)})
    before = gw.server("demo")
    pid = before["pid"]
    assert before["state"] == "running" and before["restarts"] == 0
    group = _group(pid)
    assert len(group) == 2  # the server and its helper

    async with mcp_session(gw.url()) as session:
        await session.list_tools()  # so the sleep below is the only request in flight
        outcome: dict[str, Any] = {}
        with anyio.fail_after(30):  # far below the 60 s the sleep would take
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call_outcome, session.call_tool("demo__sleep", {"seconds": 60}), outcome)
                await eventually(lambda: gw.server("demo")["in_flight"] == 1, what="the sleep call in flight")
                os.kill(pid, signal.SIGKILL)
        error = outcome["error"]
        assert error.code == -32000
        assert error.data["server"] == "demo" and error.data["reason"] == "crash"

        after = await eventually(
            lambda: (info := gw.server("demo"))["state"] == "running" and info["pid"] != pid and info,
            what="demo to be running again",
        )
        assert after["restarts"] == 1 and after["last_exit_reason"] == "crash"
        assert _text(await session.call_tool("demo__echo", {"text": "back"})) == "back"

    assert not survivors(group)  # the helper went with its server


async def test_crash_loop_ends_in_failed_until_restarted(gateway_factory: Any) -> None:
    gw = gateway_factory({"odd": misbehaving_server(restart={"max_attempts": 2, **FAST_RESTART})})
    async with mcp_session(gw.url("odd")) as session:
        await session.list_tools()
        for restarts in (1, 2):
            with pytest.raises(MCPError) as crashed:
                await session.call_tool("crash", {})
            assert crashed.value.data["reason"] == "crash"
            await eventually(functools.partial(_restarted, gw, restarts), what=f"restart {restarts}")
        with pytest.raises(MCPError):
            await session.call_tool("crash", {})  # the third crash in the window: over max_attempts
        info = await eventually(lambda: (info := gw.server("odd"))["state"] == "failed" and info, what="failed")
        assert info["restarts"] == 2 and info["pid"] is None and info["last_exit_reason"] == "crash"

        with pytest.raises(MCPError) as refused:
            await session.call_tool("echo", {"text": "anyone?"})
        assert refused.value.code == -32000
        assert refused.value.data == {"server": "odd", "reason": "failed", "last_error": info["last_error"]}
        assert "failed 3 times" in refused.value.message
        assert "POST /servers/odd/restart" in refused.value.message
        assert gw.server("odd")["state"] == "failed"  # not running: the refused call started nothing

        restarted = gw.post("/servers/odd/restart")
        assert restarted.status_code == 200, restarted.text
        assert restarted.json()["state"] == "running" and restarted.json()["restarts"] == 3
        assert _text(await session.call_tool("echo", {"text": "alive"})) == "alive"


async def test_server_that_exits_at_once_is_refused_after_its_attempts(gateway_factory: Any) -> None:
    dud = {"command": PY, "args": ["-c", "import sys; sys.exit(1)"], "restart": {"max_attempts": 2, **FAST_RESTART}}
    gw = gateway_factory({"dud": dud})
    errors = [initialize_error(gw, "dud") for _ in range(4)]
    # The first start and max_attempts more: each fails on its own; then the gateway stops trying.
    for error in errors[:3]:
        assert error["code"] == -32000 and error["data"]["reason"] == "start_failed"
        assert "exited with code 1" in error["message"]
    assert errors[3]["data"]["reason"] == "failed"
    assert "failed 3 times" in errors[3]["message"]
    info = gw.server("dud")
    assert info["state"] == "failed" and info["pid"] is None and info["restarts"] == 0
    assert info["last_exit_reason"] == "start_failed" and "exited with code 1" in info["last_error"]

    retried = gw.post("/servers/dud/restart")  # an operator's retry is one more real attempt
    assert retried.status_code == 502
    assert "exited with code 1" in retried.json()["error"] and retried.json()["server"]["state"] == "failed"
    metrics = scrape(gw)  # every real attempt is a stop that never was a start
    assert metrics.total("mcp_gateway_server_stops_total", server_id="dud", reason="start_failed") == 4
    assert metrics.total("mcp_gateway_server_stops_total", server_id="dud") == 4
    assert metrics.total("mcp_gateway_server_starts_total", server_id="dud") == 0


async def test_missing_command_fails_clearly_and_leaves_the_others_listed(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_server(), "ghost": {"command": "/nonexistent/mcp-server-ghost"}})
    async with mcp_session(gw.url()) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert "demo__echo" in tools
        assert not any(name.startswith("ghost__") for name in tools)
        with pytest.raises(MCPError) as unavailable:
            await session.call_tool("ghost__anything", {})
        error = unavailable.value
        assert error.code == -32000
        assert error.data["server"] == "ghost" and error.data["reason"] == "start_failed"
        assert "No such file or directory" in error.message
        assert _text(await session.call_tool("demo__echo", {"text": "still here"})) == "still here"
    ghost = gw.server("ghost")
    assert ghost["state"] == "failed" and ghost["pid"] is None and ghost["restarts"] == 0
    assert ghost["last_exit_reason"] == "start_failed" and "No such file or directory" in ghost["last_error"]


# -- starting and stopping -----------------------------------------------------------------------


async def test_idle_server_stops_and_starts_again_on_use(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_server(idle_timeout=1)})
    async with mcp_session(gw.url("demo")) as session:
        assert _text(await session.call_tool("echo", {"text": "one"})) == "one"
        stopped = await eventually(
            lambda: (info := gw.server("demo"))["state"] == "stopped" and info, what="the idle stop"
        )
        assert stopped["last_exit_reason"] == "idle" and stopped["pid"] is None
        [first] = started_pids(gw, "demo")  # from the log: /servers may show it stopped already
        assert not _pid_alive(first)
        assert _text(await session.call_tool("echo", {"text": "two"})) == "two"
        pids = started_pids(gw, "demo")
        assert len(pids) == 2 and pids[1] != first


async def test_lazy_server_starts_on_first_use_and_eager_at_boot(gateway_factory: Any) -> None:
    gw = gateway_factory({"eager": demo_server(lazy=False), "lazy": demo_server(lazy=True)})
    servers = gw.servers()
    assert servers["eager"]["state"] == "running" and servers["eager"]["pid"]
    assert servers["lazy"]["state"] == "stopped" and servers["lazy"]["pid"] is None
    assert {proc.pid for proc in gw.children()} == {servers["eager"]["pid"]}
    async with mcp_session(gw.url("lazy")) as session:
        assert _text(await session.call_tool("echo", {"text": "woken"})) == "woken"
    lazy = gw.server("lazy")
    assert lazy["state"] == "running" and lazy["pid"] in {proc.pid for proc in gw.children()}


async def test_admin_stop_and_restart(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_server(lazy=False)})
    first = psutil.Process(gw.server("demo")["pid"])
    async with mcp_session(gw.url("demo")) as session:
        await session.list_tools()
        outcome: dict[str, Any] = {}
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call_outcome, session.call_tool("sleep", {"seconds": 60}), outcome)
                await eventually(lambda: gw.server("demo")["in_flight"] == 1, what="the sleep call in flight")
                stopped = gw.post("/servers/demo/stop")
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["state"] == "stopped" and stopped.json()["last_exit_reason"] == "manual"
        assert stopped.json()["pid"] is None
        assert outcome["error"].data == {"server": "demo", "reason": "manual", "detail": "closed by the gateway"}
        assert not survivors([first])

        assert _text(await session.call_tool("echo", {"text": "on demand"})) == "on demand"
        second = gw.server("demo")
        assert second["state"] == "running" and second["pid"] != first.pid and second["restarts"] == 0
        second_proc = psutil.Process(second["pid"])

        restarted = gw.post("/servers/demo/restart")
        assert restarted.status_code == 200, restarted.text
        third = restarted.json()
        assert third["state"] == "running" and third["restarts"] == 1
        assert third["pid"] not in (None, first.pid, second["pid"])
        assert not survivors([second_proc])
        assert _text(await session.call_tool("echo", {"text": "restarted"})) == "restarted"


# -- shutdown -----------------------------------------------------------------------------------


def _headers(session_id: str, accept: str = "application/json, text/event-stream") -> dict[str, str]:
    return {"Accept": accept, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}


async def raw_call(client: httpx.AsyncClient, gw: Gateway, server: str, session_id: str, tool: str) -> Any:
    """One tools/call over raw HTTP: the response, or the transport error that ended it."""
    args = {"seconds": 2} if tool == "sleep" else {}
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": args}}
    try:
        return await client.post(gw.url(server), json=message, headers=_headers(session_id))
    except httpx.HTTPError as exc:
        return exc


async def sigterm_during(gw: Gateway, calls: dict[str, str]) -> dict[str, Any]:
    """SIGTERM the gateway while one call per server (server id -> tool) and a GET stream are open.

    Returns each server's call outcome once the gateway has exited. Fails if any process the gateway
    had started outlives it (and kills those).
    """
    sessions = {server: raw_initialize(gw, f"/servers/{server}/mcp") for server in calls}
    outcomes: dict[str, Any] = {}
    children: list[psutil.Process] = []
    streaming = anyio.Event()

    async def follow(client: httpx.AsyncClient, server: str) -> None:
        headers = _headers(sessions[server], "text/event-stream")
        async with client.stream("GET", gw.url(server), headers=headers) as stream:
            assert stream.status_code == 200
            streaming.set()
            async for _ in stream.aiter_lines():
                pass  # until the drain ends it

    async def call(client: httpx.AsyncClient, server: str, tool: str) -> None:
        outcomes[server] = await raw_call(client, gw, server, sessions[server], tool)

    try:
        with anyio.fail_after(60):
            async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client, anyio.create_task_group() as tasks:
                tasks.start_soon(follow, client, next(iter(calls)))
                for server, tool in calls.items():
                    tasks.start_soon(call, client, server, tool)
                await streaming.wait()
                await eventually(
                    lambda: all(gw.servers()[server]["in_flight"] == 1 for server in calls), what="calls in flight"
                )
                children.extend(gw.children())
                await stop_gateway(gw)
    finally:
        leftover = survivors(children)
    assert not leftover, f"outlived the gateway: {leftover}"
    return outcomes


async def test_sigterm_drains_in_flight_calls_and_leaves_no_process(gateway_factory: Any) -> None:
    # drain_timeout is longer than the test waits for the exit (30 s, in `Gateway.stop`): the gateway
    # exits in time only because the drain ends the GET stream and waits just for the calls in flight.
    gw = gateway_factory(
        {"demo": demo_with_helper(lazy=False), "odd": misbehaving_server(lazy=False, request_timeout=4)},
        {"limits": {"drain_timeout": 60}},
    )
    assert len(gw.children()) == 3  # demo, its helper, odd
    outcomes = await sigterm_during(gw, {"demo": "sleep", "odd": "hang"})
    assert outcomes["demo"].json()["result"]["content"][0]["text"] == "slept 2s"  # finished during the drain
    assert outcomes["odd"].json()["error"]["code"] == -32001  # ended by its own request timeout
    assert "draining: refusing new requests" in gw.log()


async def test_sigterm_with_a_hung_call_and_a_stubborn_server_still_exits(gateway_factory: Any) -> None:
    # The server ignores SIGTERM and the end of stdin: only SIGKILL stops it. A drain_timeout under
    # a second used to become uvicorn's "wait forever".
    stubborn = misbehaving_server(lazy=False, env={"MISBEHAVING_STUBBORN": "1"})
    gw = gateway_factory({"odd": stubborn}, {"limits": {"drain_timeout": 0.5}})
    hang = (await sigterm_during(gw, {"odd": "hang"}))["odd"]
    # Just before the drain timeout the gateway answers it with a JSON-RPC error saying why.
    assert not isinstance(hang, httpx.HTTPError), hang
    error = hang.json()["error"]
    assert error["data"]["reason"] == "shutdown" and "shut down" in error["message"], error


async def test_sigterm_during_an_idle_stop_still_stops_the_server(gateway_factory: Any) -> None:
    # A stubborn server takes seconds to stop (stdin closed, SIGTERM ignored, then SIGKILL): the
    # gateway is told to exit while the idle sweeper is in the middle of that.
    stubborn = misbehaving_server(lazy=False, idle_timeout=0.2, env={"MISBEHAVING_STUBBORN": "1"})
    gw = gateway_factory({"odd": stubborn})
    children = gw.children()
    assert len(children) == 1
    await eventually(lambda: gw.server("odd")["state"] == "stopping", what="the idle stop to begin")
    try:
        await stop_gateway(gw)
    finally:
        leftover = survivors(children)
    assert not leftover, f"outlived the gateway: {leftover}"


def test_drain_turns_readiness_off_and_refuses_new_requests() -> None:
    """What SIGTERM starts (uvicorn's signal handler calls `begin_drain`), seen in-process: a real
    gateway closes its listener at once, so no new request could reach it to observe this."""
    gateway = AppGateway(parse_config({"servers": {"demo": demo_server()}}))
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "late", "version": "0"}}
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    accept = {"Accept": "application/json, text/event-stream"}
    with TestClient(create_app(gateway), base_url="http://127.0.0.1") as client:
        assert client.get("/readyz").status_code == 200
        early = client.post("/mcp", json=initialize, headers=accept)
        session = {"Mcp-Session-Id": early.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        gateway.begin_drain()
        readyz = client.get("/readyz")
        assert readyz.status_code == 503 and readyz.json() == {"status": "draining"}
        late = client.post("/mcp", json=initialize, headers=accept)
        assert late.status_code == 503
        assert late.json()["error"]["data"] == {"reason": "shutdown"}
        stream = client.get("/mcp", headers={**session, "Accept": "text/event-stream"})  # no new GET stream
        assert stream.status_code == 503
        assert "the gateway is shutting down" in stream.json()["error"]["message"]


# -- what a stdio child sees and says ---------------------------------------------------------------


async def test_stdio_stderr_is_logged_with_the_server_id(gateway_factory: Any) -> None:
    gw = gateway_factory({"noisy": misbehaving_server(lazy=False)})
    pid = gw.server("noisy")["pid"]
    expected = f"gateway.upstream.stderr: [noisy] stdio-misbehaving started (pid {pid})"
    await eventually(lambda: expected in gw.log(), what="the child's stderr line in the gateway log")


async def test_a_crashing_servers_last_stderr_lines_reach_the_log(gateway_factory: Any) -> None:
    gw = gateway_factory({"odd": misbehaving_server(lazy=False, restart={"enabled": False})})
    pid = gw.server("odd")["pid"]
    async with mcp_session(gw.url("odd")) as session:
        with pytest.raises(MCPError):
            await session.call_tool("crash", {})
    expected = f"gateway.upstream.stderr: [odd] last words of pid {pid}"
    await eventually(lambda: expected in gw.log(), what="the crashed server's last stderr line in the log")
    assert gw.log().count("gateway.upstream.stderr: [odd]   frame ") == 2000


async def test_stdio_child_gets_its_configured_env_and_not_the_gateways_secrets(gateway_factory: Any) -> None:
    secrets = {"MCP_GATEWAY_SECRET_TOKEN": "s3cret", "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer otel-s3cret"}
    configured = {"CONFIGURED_VALUE": "visible", "PASSED_ON": "${MCP_GATEWAY_PASSED_ON}"}
    gw = gateway_factory(
        {"odd": misbehaving_server(env=configured)}, env={**secrets, "MCP_GATEWAY_PASSED_ON": "on purpose"}
    )
    async with mcp_session(gw.url("odd")) as session:
        env = json.loads(_text(await session.call_tool("env", {})))
    assert env["CONFIGURED_VALUE"] == "visible"
    assert env["PASSED_ON"] == "on purpose"  # what the config names explicitly does get through
    assert "PATH" in env
    assert not set(secrets) & set(env)
    assert not any("s3cret" in value for value in env.values())


async def test_request_timeout_answers_and_cancels_upstream(gateway_factory: Any) -> None:
    gw = gateway_factory({"odd": misbehaving_server(request_timeout=1)})
    async with mcp_session(gw.url("odd")) as session:
        await session.list_tools()
        with anyio.fail_after(30), pytest.raises(MCPError) as timed_out:
            await session.call_tool("hang", {})
        assert timed_out.value.code == -32001
        assert timed_out.value.data == {"server": "odd", "reason": "timeout", "timeout": 1}

        async def cancellation_seen() -> Any:
            record = json.loads(_text(await session.call_tool("cancelled", {})))
            return record["cancelled"] and record

        record = await eventually(cancellation_seen, what="notifications/cancelled upstream")
        assert record["cancelled"] == record["hung"] and len(record["hung"]) == 1
        assert gw.server("odd")["state"] == "running"  # a slow answer is not a dead server
