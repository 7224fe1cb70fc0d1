"""Real processes for tests, on free loopback ports, each stopped by its pid: gateways, the test
upstream servers, and the config entries that start them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from tests.support.paths import PY, REPO, TOOLS
from tests.support.waiting import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_server(**extra: Any) -> dict[str, Any]:
    return {"command": PY, "args": ["-m", "gateway.demo_server"], **extra}


def misbehaving_server(**extra: Any) -> dict[str, Any]:
    return {"command": PY, "args": ["-m", "tests.servers.stdio_misbehaving"], "cwd": str(REPO), **extra}


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
            children: list[psutil.Process] = psutil.Process(self.proc.pid).children(recursive=True)
            return children
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


FAST_RESTART = {"backoff_initial": 0.05, "backoff_max": 0.2}
