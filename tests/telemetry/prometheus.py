"""A real Prometheus (Debian's `prometheus` binary) for tests: scrapes given targets every second.

`run_prometheus` writes a temporary config, starts the server on a free loopback port with its own
data directory, waits for `/-/ready`, and stops it by pid on exit. `Prometheus.query` runs an
instant PromQL query through the HTTP API; `wait_for_value` polls one until it says what is expected.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.processes import free_port
from tests.support.waiting import wait_for

MISSING = "{} is not on PATH: run `make test` (scripts/install-tools.sh installs Debian's prometheus package)"


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; fails (never skips) when it is missing."""
    path = shutil.which(name)
    assert path is not None, MISSING.format(name)
    return path


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector `promql` evaluates to now: [{"metric": {labels}, "value": float}, ...]."""
        response = httpx.get(f"{self.base}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{promql}: {response.text}"
        assert body["data"]["resultType"] == "vector", f"{promql}: {body['data']['resultType']}"
        return [{"metric": item["metric"], "value": float(item["value"][1])} for item in body["data"]["result"]]

    def targets(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base}/api/v1/targets", timeout=10)
        return list(response.json()["data"]["activeTargets"])

    def wait_for_value(self, promql: str, expected: float, timeout: float = 30.0) -> None:
        """Wait until `promql` is one sample equal to `expected` (the scrapes caught up)."""
        last: list[dict[str, Any]] = []

        def caught_up() -> bool:
            nonlocal last
            last = self.query(promql)
            return len(last) == 1 and math.isclose(last[0]["value"], expected)

        try:
            wait_for(caught_up, timeout, f"{promql} == {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last result: {last}; targets: {self.targets()}") from None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def run_prometheus(workdir: Path, targets: list[str], job: str = "mcp-gateway") -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (host:port, loopback only) on `/metrics` every second."""
    executable = binary("prometheus")
    assert all(target.startswith("127.0.0.1:") for target in targets), targets
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": targets}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                executable,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    prometheus = Prometheus(proc, port, log_path)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}:\n{prometheus.log()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{prometheus.base}/-/ready", timeout=1).status_code == 200
            return False

        wait_for(ready, 60, "prometheus to be ready")
        yield prometheus
    finally:
        prometheus.stop()
