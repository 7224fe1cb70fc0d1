"""A tiny run of each benchmark, so they keep working; their figures are not judged here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.paths import PY, REPO


def _run(script: str, out: Path) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [PY, f"bench/{script}", "--smoke", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_overhead_benchmark_runs(tmp_path: Path) -> None:
    result = _run("overhead.py", tmp_path / "overhead.json")
    arms = {row["arm"] for row in result["summary"]}
    assert arms == {
        "http direct",
        "http via gateway",
        "http via gw/asyncio",
        "stdio direct",
        "stdio via gateway",
        "stdio via gw/asyncio",
        "http26 direct",
        "http26 via gateway",
        "stdio26 direct",
        "stdio26 via gateway",
    }
    via = [row for row in result["summary"] if "gateway" in row["arm"]]
    assert all(row["calls_per_s"] > 0 and row["gateway_cpu_ms_per_call"] is not None for row in via)
    assert result["machine"]["cpus"]


def test_telemetry_benchmark_runs(tmp_path: Path) -> None:
    result = _run("telemetry.py", tmp_path / "telemetry.json")
    assert {row["arm"] for row in result["per_request"]} == {
        "telemetry off",
        "telemetry on (Prometheus + OTLP)",
        "on + HTTP server metrics",
    }
    assert result["scrape"]["histogram_series"] > 0 and result["scrape"]["page_bytes"] > 0
    assert result["scrape_interference"]["p99_ms_no_scrape"] > 0


def test_pool_benchmark_runs(tmp_path: Path) -> None:
    result = _run("pool.py", tmp_path / "pool.json")
    arms = {row["arm"] for row in result["summary"]}
    assert arms == {"direct", "gateway, pooled", "gateway, a session per call"}
    assert result["hit"]["acquire_release_us_median"] > 0


def test_soak_benchmark_runs(tmp_path: Path) -> None:
    result = _run("soak.py", tmp_path / "soak.json")
    assert result["lost"] == 0 and result["tracebacks_in_log"] == 0, result["failed"]
    assert result["ok"] > 0 and result["kills"] >= 1
    measured = {"rss_mib", "open_fds", "tasks", "series", "p99_ms", "cpu_ms_per_call"}
    assert result["samples"] and result["slopes_per_hour"].keys() == measured
    assert result["slopes_per_hour_second_half"].keys() == measured
