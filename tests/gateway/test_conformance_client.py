"""The MCP conformance suite's client scenarios at 2026-07-28, with the gateway as the client under test.

For each scenario the 0.2 suite's CLI starts its mock server and runs tests/conformance/gateway_client.py,
which puts a real gateway between that mock and the official SDK client: the mock's checks judge what
the gateway sends it. A scenario passes when it left checks, none of them a FAILURE, and the wrapper
reports that it did everything the scenario asks.

    .venv/bin/python -m pytest -p no:cacheprovider -q tests/gateway/test_conformance_client.py
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conformance.gateway_client import DONE
from tests.conformance.runner import CONFORMANCE_2026, Check, minimal_env
from tests.support.paths import PY, REPO

SCENARIOS = [
    "tools_call",
    "request-metadata",
    "http-standard-headers",
    "http-custom-headers",
    "http-invalid-tool-headers",
    "sep-2322-client-request-state",
]
WRAPPER = f"{PY} -m tests.conformance.gateway_client"  # the CLI splits it on spaces and appends the mock's URL
CLIENT_TIMEOUT_MS = 60_000  # the CLI kills the wrapper after this (the default, 30 s, is tight on a loaded machine)


def run_client_scenario(scenario: str, workdir: Path, timeout: float = 120.0) -> Path | None:
    """Run one client scenario at 2026-07-28; the directory of its checks.json, stdout.txt and stderr.txt
    (None if the CLI left none). The CLI's own output goes to ``workdir/conformance.log``."""
    out_dir = workdir / "results"
    argv = [str(CONFORMANCE_2026), "client", "--command", WRAPPER, "--scenario", scenario]
    argv += ["--spec-version", "2026-07-28", "--timeout", str(CLIENT_TIMEOUT_MS), "-o", str(out_dir)]
    with (workdir / "conformance.log").open("w") as log:
        subprocess.run(
            argv,
            cwd=REPO,
            env=minimal_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    found = sorted(out_dir.glob(f"{scenario}-*/checks.json"))
    return found[-1].parent if found else None


def failed_checks(checks: list[Check]) -> str:
    """One line per FAILURE: its id, what it says went wrong, and what the mock saw."""
    return "\n".join(
        f"{c.get('id')}: {c.get('errorMessage') or c.get('description')} {json.dumps(c.get('details'))}"
        for c in checks
        if c.get("status") == "FAILURE"
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_client_scenario_through_the_gateway(tmp_path: Path, scenario: str) -> None:
    results = run_client_scenario(scenario, tmp_path)
    assert results is not None, f"no results; the CLI said:\n{(tmp_path / 'conformance.log').read_text()[-3000:]}"
    checks = [c for c in json.loads((results / "checks.json").read_text()) if isinstance(c, dict)]
    assert checks, "the scenario left no checks"
    assert not any(c.get("status") == "FAILURE" for c in checks), failed_checks(checks)
    stdout = (results / "stdout.txt").read_text().splitlines()
    assert DONE in stdout, f"the client did not complete the scenario:\n{(results / 'stderr.txt').read_text()}"
