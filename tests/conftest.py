"""Shared fixtures: real gateways and real upstream servers on free loopback ports.

Every process a test starts binds 127.0.0.1 and is stopped by the test, by its pid. Waits are
conditions polled under a deadline, never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import psutil
import pytest
import yaml
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TOOLS = REPO / ".tools"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def eventually(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """`wait_for` for async tests: polls (plain or awaitable conditions) without blocking the event loop."""
    try:
        with anyio.fail_after(timeout):
            while True:
                value = condition()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def demo_server(**extra: Any) -> dict[str, Any]:
    return {"command": PY, "args": ["-m", "gateway.demo_server"], **extra}


def misbehaving_server(**extra: Any) -> dict[str, Any]:
    return {"command": PY, "args": ["-m", "tests.servers.stdio_misbehaving"], "cwd": str(REPO), **extra}


# A stdio server that leaves a helper process in its group, as `npx` leaves `node`: it starts a
# sleeper (pipes closed, so only the process group ties it to the server), then becomes the demo server.
_WITH_HELPER = (
    "import os, subprocess, sys; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
    "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'gateway.demo_server'])"
)


def demo_with_helper(**extra: Any) -> dict[str, Any]:
    return {"command": PY, "args": ["-c", _WITH_HELPER], "cwd": str(REPO), **extra}


def everything_server(**extra: Any) -> dict[str, Any]:
    entry = TOOLS / "bin" / "mcp-server-everything"
    assert entry.exists(), "server-everything is missing: run `make test` (scripts/install-tools.sh installs it)"
    return {"command": str(entry), "args": ["stdio"], **extra}


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    config_path: Path
    log_path: Path
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, server: str | None = None) -> str:
        return f"{self.base}/mcp" if server is None else f"{self.base}/servers/{server}/mcp"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.get(self.base + path, headers=headers, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.post(self.base + path, headers=headers, timeout=30, **kwargs)

    def delete_sessions(self, server: str = "demo", **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.delete(f"{self.base}/servers/{server}/sessions", headers=headers, timeout=30, **kwargs)

    def servers(self) -> dict[str, dict[str, Any]]:
        return {s["id"]: s for s in self.get("/servers").json()["servers"]}

    def server(self, server_id: str) -> dict[str, Any]:
        return self.servers()[server_id]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(self.proc.pid).children(recursive=True)
        return []

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the gateway and wait; SIGKILL (and fail) if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"gateway did not exit within {timeout}s of SIGTERM") from None
        return self.proc.returncode


def start_gateway(
    tmp_path: Path,
    servers: dict[str, Any],
    gateway: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    args: tuple[str, ...] = (),
) -> Gateway:
    """A gateway process; `extra` holds further top-level config sections (e.g. `telemetry:`), `args`
    further `serve` options."""
    port = free_port()
    config = {**(extra or {}), "gateway": {"id": "test-gw", "port": port, **(gateway or {})}, "servers": servers}
    config_path = tmp_path / f"gateway-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [PY, "-m", "gateway", "serve", "--config", str(config_path), "--log-level", "debug", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
    gw = Gateway(proc, port, config_path, log_path)
    tokens = (gateway or {}).get("auth", {}).get("tokens")
    if tokens:
        gw.headers = {"Authorization": f"Bearer {tokens[0]}"}

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}:\n{gw.log()}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(gw.base + "/readyz", timeout=1).status_code == 200
        return False

    wait_for(ready, 30, "the gateway to be ready")
    return gw


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


def stop_gateway(gw: Gateway) -> None:
    """Stop a gateway and fail if it left any of its children running (they are killed first)."""
    children = gw.children()
    gw.stop()
    psutil.wait_procs(children, timeout=10)
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for proc in alive:
        proc.kill()
    assert not alive, f"gateway left children running: {alive}"


@dataclass
class Upstream:
    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_http_upstream(*flags: str, module: str = "tests.servers.http_upstream") -> Upstream:
    proc = subprocess.Popen(
        [PY, "-m", module, "--port", "0", *flags],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise AssertionError(f"http upstream did not start: {line!r}")
    return Upstream(proc, int(line.split()[1]))


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


@contextlib.asynccontextmanager
async def mcp_session(
    url: str, headers: dict[str, str] | None = None, transport: Any = None, **callbacks: Any
) -> AsyncIterator[ClientSession]:
    """The official MCP client, initialized against `url`; `callbacks` go to `ClientSession`.

    `transport` (an httpx2 transport) stands between the client and the network, e.g. a balancer.
    """
    import httpx2

    client = httpx2.AsyncClient(headers=headers or {}, transport=transport, timeout=httpx2.Timeout(30.0, read=120.0))
    async with (
        client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write, **callbacks) as session,
    ):
        await session.initialize()
        yield session


def rpc(gw: Gateway, path: str, message: Any, session_id: str | None = None, **headers: str) -> httpx.Response:
    """One raw JSON-RPC POST, for tests of exactly what goes over the wire."""
    all_headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **headers}
    if session_id:
        all_headers["Mcp-Session-Id"] = session_id
        all_headers.setdefault("MCP-Protocol-Version", "2025-11-25")
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return gw.post(path, content=body, headers=all_headers)


def error_message(response: httpx.Response) -> str:
    """The message of an error answer: MCP endpoints send JSON-RPC errors, other routes {"error": ...}."""
    error = response.json()["error"]
    return str(error["message"] if isinstance(error, dict) else error)


def raw_initialize(gw: Gateway, path: str, version: str = "2025-11-25") -> str:
    response = rpc(
        gw,
        path,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
        },
    )
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    rpc(gw, path, initialized, session_id, **{"MCP-Protocol-Version": version})
    return session_id


@dataclass
class Metrics:
    """One `/metrics` page, parsed by prometheus_client's own parser."""

    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    families: dict[str, str]  # family name -> type

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None."""
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample of `name` whose labels include these."""
        wanted = set(labels.items())
        return sum(value for (sample, found), value in self.samples.items() if sample == name and wanted <= found)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(found)[label] for (sample, found) in self.samples if sample == name and label in dict(found)}


def parse_metrics(text: str, openmetrics: bool = False) -> Metrics:
    """Parse a page; `openmetrics` uses prometheus_client's strict OpenMetrics parser instead."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    families: dict[str, str] = {}
    for family in (openmetrics_families if openmetrics else text_string_to_metric_families)(text):
        families[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series on /metrics: {key}"
            samples[key] = sample.value
    return Metrics(text, samples, families)


def scrape(gw: Gateway, **headers: str) -> Metrics:
    response = gw.get("/metrics", **({"headers": headers} if headers else {}))
    assert response.status_code == 200, response.text
    return parse_metrics(response.text)


# -- shared by several test modules ------------------------------------------------------------------

FAST_RESTART = {"backoff_initial": 0.05, "backoff_max": 0.2}


async def call_outcome(call: Awaitable[Any], outcome: dict[str, Any]) -> None:
    try:
        outcome["result"] = await call
    except MCPError as exc:
        outcome["error"] = exc


def initialize_error(gw: Gateway, server: str) -> dict[str, Any]:
    """The JSON-RPC error of a raw initialize on one server's endpoint, which must fail."""
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    response = rpc(gw, f"/servers/{server}/mcp", {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
    assert response.status_code == 200, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


SLEEP_ID = 7


async def while_sleeping(gw: Gateway, calls: list[tuple[str, str]], check: Callable[[], Awaitable[None]]) -> None:
    """Run `check` while `sleep` calls are in flight, then cancel them with `notifications/cancelled`.

    `calls` are (endpoint path, tool name) pairs, each on a client session of its own (the gateway's
    first token: A's). Raw HTTP rather than the SDK client: an SDK session that exits while the
    answer to a request it cancelled is on its way fails in its own teardown.
    """
    opened = [(path, raw_initialize(gw, path), tool) for path, tool in calls]
    answers: list[dict[str, Any]] = []

    def sleep(path: str, session_id: str, tool: str) -> None:
        call = {"name": tool, "arguments": {"seconds": 60}}
        response = rpc(gw, path, {"jsonrpc": "2.0", "id": SLEEP_ID, "method": "tools/call", "params": call}, session_id)
        assert response.status_code == 200, response.text
        answers.append(answer(response))

    async with anyio.create_task_group() as group:
        for path, session_id, tool in opened:
            group.start_soon(anyio.to_thread.run_sync, sleep, path, session_id, tool)
        await check()
        for path, session_id, _ in opened:
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": SLEEP_ID}}
            assert rpc(gw, path, cancel, session_id).status_code == 202
    assert [answer["error"]["data"]["reason"] for answer in answers] == ["cancelled"] * len(calls), answers


def answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a POST, sent as JSON or as the last event of an SSE stream."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        answer: dict[str, Any] = json.loads(data[-1])
    else:
        answer = response.json()
    return answer
