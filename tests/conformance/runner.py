"""Drive the MCP conformance suite and the reference "everything" server (loopback only).

Both come from ``scripts/install-tools.sh`` (``.tools/bin/``, run with Node 22). The CLI
writes ``<out>/server-<scenario>-<timestamp>/checks.json`` per scenario: a list of checks
whose ``status`` is SUCCESS, FAILURE, WARNING or INFO. We read those, not its stdout.

As a stdio upstream, server-everything is ``SERVER_EVERYTHING_STDIO_ARGV``; give it
``minimal_env()``: its ``get-env`` tool returns its whole environment to any caller.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
NODE = TOOLS_BIN / "node"
CONFORMANCE = TOOLS_BIN / "mcp-conformance"
CONFORMANCE_2026 = TOOLS_BIN / "mcp-conformance-2026"  # 0.2.0-alpha.12, for --requirements 2026-07-28
SERVER_EVERYTHING = TOOLS_BIN / "mcp-server-everything"
SERVER_EVERYTHING_STDIO_ARGV = [str(SERVER_EVERYTHING), "stdio"]

Check = dict[str, Any]
_RESULT_DIR = re.compile(r"^server-(?P<name>.+)-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d-\d{3}Z$")


def tools_installed() -> bool:
    return all(p.exists() for p in (NODE, CONFORMANCE, CONFORMANCE_2026, SERVER_EVERYTHING))


def minimal_env(**extra: str) -> dict[str, str]:
    """Environment for the node tools: nothing inherited but HOME."""
    env = {
        "PATH": os.pathsep.join([str(TOOLS_BIN), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
        "MCP_BIND_HOST": "127.0.0.1",  # read by the wrapper's listen() preload
        "GZIP_ALLOWED_DOMAINS": "127.0.0.1,localhost",  # its gzip tool would fetch any URL
    }
    return env | extra


def list_server_scenarios() -> list[str]:
    argv = [str(CONFORMANCE), "list", "--server"]
    out = subprocess.run(argv, env=minimal_env(), capture_output=True, text=True, check=True, timeout=60).stdout
    return re.findall(r"^\s+-\s+(\S+)", out, re.M)


def _collect(out_dir: Path) -> dict[str, list[Check]]:
    found: dict[str, list[Check]] = {}
    for d in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        m = _RESULT_DIR.match(d.name)
        try:
            checks = json.loads((d / "checks.json").read_text()) if m else None
        except (OSError, ValueError):
            continue
        if m and isinstance(checks, list):
            found[m.group("name")] = [c for c in checks if isinstance(c, dict)]
    return found


def run_scenarios_checks(
    url: str, scenarios: list[str] | None, workdir: Path, timeout: float = 600.0
) -> dict[str, list[Check]]:
    """Run 2025-11-25 scenarios (None: every server scenario, in one CLI run) and return their checks.

    A scenario that left no checks.json (CLI crash, timeout) maps to []. The CLI's
    output goes to ``workdir/conformance-<n>.log``.
    """
    if urlsplit(url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise ValueError(f"refusing to run conformance against non-loopback URL {url!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    wanted = list_server_scenarios() if scenarios is None else list(scenarios)
    runs = [["--suite", "all"]] if scenarios is None else [["--scenario", s] for s in wanted]
    results: dict[str, list[Check]] = {}
    for n, extra in enumerate(runs):
        out_dir = workdir / f"results-{n}"
        argv = [str(CONFORMANCE), "server", "--url", url, "-o", str(out_dir), *extra]
        with (workdir / f"conformance-{n}.log").open("w") as log:
            try:
                subprocess.run(
                    argv,
                    env=minimal_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                log.write(f"\n[runner] timed out after {timeout}s\n")
        results.update(_collect(out_dir))
    return {s: results.get(s, []) for s in wanted}


def run_requirements_checks(url: str, revision: str, workdir: Path, timeout: float = 900.0) -> dict[str, list[Check]]:
    """Run, with the 0.2 suite, every server scenario a revision requires (and those it runs unscored)."""
    if urlsplit(url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise ValueError(f"refusing to run conformance against non-loopback URL {url!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    out_dir = workdir / "results"
    argv = [str(CONFORMANCE_2026), "server", "--url", url, "-o", str(out_dir), "--requirements", revision]
    with (workdir / "conformance.log").open("w") as log:
        try:
            subprocess.run(
                argv, env=minimal_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            log.write(f"\n[runner] timed out after {timeout}s\n")
    return _collect(out_dir)


def required_server_scenarios(revision: str) -> list[str]:
    """The server scenarios a revision requires, from the 0.2 suite's frozen requirements file."""
    path = TOOLS_BIN.parent / "npm" / "node_modules" / "mcp-conformance-2026" / "requirements" / f"{revision}.yaml"
    if not path.exists():
        return []  # tools not installed: the test that uses the list fails on the missing CLI first
    listed = yaml.safe_load(path.read_text())["server"]
    return [name for name in listed if isinstance(name, str)]


def scenario_passed(checks: list[Check], warnings_fail: bool = False) -> bool:
    """The CLI's own rule: at least one check and no FAILURE (optionally: no WARNING)."""
    bad = {"FAILURE", "WARNING"} if warnings_fail else {"FAILURE"}
    return bool(checks) and not any(c.get("status") in bad for c in checks)


def run_scenarios(url: str, scenarios: list[str] | None, workdir: Path, warnings_fail: bool = False) -> dict[str, bool]:
    checks = run_scenarios_checks(url, scenarios, workdir)
    return {s: scenario_passed(c, warnings_fail) for s, c in checks.items()}


def failure_summary(checks: dict[str, list[Check]]) -> str:
    """One line per failed check (or scenario without results), for assertion messages."""
    lines = [f"{name}: no results (see conformance-*.log)" for name, cs in checks.items() if not cs]
    lines += [
        f"{name}: {c.get('id')}: {c.get('errorMessage') or c.get('description')}"
        for name, cs in checks.items()
        for c in cs
        if c.get("status") == "FAILURE"
    ]
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def start_server_everything_http(port: int, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """server-everything over streamable HTTP at http://127.0.0.1:<port>/mcp, ready to use.

    It logs every request: output goes to ``log_path`` or is discarded. Stop it with ``stop_process``.
    """
    argv = [str(SERVER_EVERYTHING), "streamableHttp"]
    with open(log_path or os.devnull, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            argv, env=minimal_env(PORT=str(port)), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_port(port, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
