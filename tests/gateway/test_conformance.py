"""The MCP conformance suites (2025-11-25 and 2026-07-28), against server-everything directly and through the gateway.

Directly, about a third of the scenarios pass (the rest expect the suite's own fixture tools);
every one of those must pass through `/servers/everything/mcp` as well, and the generic
scenarios must pass against the aggregated `/mcp`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conformance.runner import (
    failure_summary,
    free_port,
    minimal_env,
    required_server_scenarios,
    run_requirements_checks,
    run_scenarios_checks,
    scenario_passed,
    start_server_everything_http,
    stop_process,
)
from tests.support.paths import PY, REPO
from tests.support.processes import Upstream, everything_server, start_http_upstream

GENERIC = ["server-initialize", "ping", "logging-set-level", "tools-list", "prompts-list", "resources-list"]


def _passed(checks: dict[str, list[dict[str, Any]]]) -> set[str]:
    return {name for name, found in checks.items() if scenario_passed(found)}


def test_everything_scenarios_that_pass_directly_pass_through_the_gateway(tmp_path: Path, gateway_factory: Any) -> None:
    port = free_port()
    direct_server = start_server_everything_http(port, log_path=tmp_path / "everything.log")
    try:
        direct = run_scenarios_checks(f"http://127.0.0.1:{port}/mcp", None, tmp_path / "direct")
    finally:
        stop_process(direct_server)
    passing_directly = _passed(direct)
    # The suite really ran: the basic scenarios pass against the reference server itself.
    assert set(GENERIC) <= passing_directly, failure_summary(direct)

    gw = gateway_factory({"everything": everything_server(env=minimal_env())})
    through = run_scenarios_checks(gw.url("everything"), None, tmp_path / "through")
    lost = sorted(passing_directly - _passed(through))
    assert lost == [], failure_summary({name: through[name] for name in lost})

    aggregate = run_scenarios_checks(gw.url(), GENERIC, tmp_path / "aggregate")
    assert _passed(aggregate) == set(GENERIC), failure_summary(aggregate)


# The 2026-07-28 scenarios a server of the 2025 revisions can pass through the gateway without the suite's
# fixtures: in front of server-everything, the gateway serves these in 2026 itself.
SERVED_2026 = [
    "tools-list",
    "server-sse-multiple-streams",
    "resources-list",
    "sep-2164-resource-not-found",
    "prompts-list",
    "dns-rebinding-protection",
    "caching",
    "http-header-validation",
]


def test_2026_client_through_the_gateway_to_a_2025_server(tmp_path: Path, gateway_factory: Any) -> None:
    gw = gateway_factory({"everything": everything_server(env=minimal_env())})
    for name, url in (("one", gw.url("everything")), ("aggregate", gw.url())):
        checks = run_requirements_checks(url, "2026-07-28", tmp_path / name)
        assert set(SERVED_2026) <= _passed(checks), failure_summary({s: checks.get(s, []) for s in SERVED_2026})


REQUIRED_2026 = required_server_scenarios("2026-07-28")
# On /mcp tools and prompts are named {server}__{name}: these scenarios call the fixtures by their bare names.
BARE_NAMES = {
    "completion-complete",  # completes an argument of the prompt test_prompt_with_arguments
    "server-stateless",  # calls test_missing_capability, test_logging_tool, test_streaming_elicitation
    *(name for name in REQUIRED_2026 if name.startswith(("tools-call-", "prompts-get-", "input-required-result-"))),
}


def _conformance_server(kind: str, modern_only: bool) -> tuple[dict[str, Any], Upstream | None]:
    """The suite's fixture server (tests/servers/conformance_server.py) as a gateway upstream of `kind`."""
    flags = ["--modern-only"] if modern_only else []
    if kind == "stdio":
        args = ["-m", "tests.servers.conformance_server", "--transport", "stdio", *flags]
        return {"command": PY, "args": args, "cwd": str(REPO)}, None
    upstream = start_http_upstream("--transport", "http", *flags, module="tests.servers.conformance_server")
    return {"url": upstream.url}, upstream


@pytest.mark.parametrize(("kind", "modern_only"), [("http", False), ("http", True), ("stdio", False), ("stdio", True)])
def test_2026_requirements_through_the_gateway(
    tmp_path: Path, gateway_factory: Any, kind: str, modern_only: bool
) -> None:
    """Every required 2026-07-28 server scenario passes through /servers/{id}/mcp, in front of the fixture server
    speaking both eras or 2026 alone; on /mcp, every one that does not call a fixture by its bare name."""
    config, upstream = _conformance_server(kind, modern_only)
    try:
        if upstream is not None and not modern_only:  # the server itself passes them all, directly
            direct = run_requirements_checks(upstream.url, "2026-07-28", tmp_path / "direct")
            assert set(REQUIRED_2026) <= _passed(direct), failure_summary(direct)
        gw = gateway_factory({"conf": config})
        one = run_requirements_checks(gw.url("conf"), "2026-07-28", tmp_path / "one")
        lost = sorted(set(REQUIRED_2026) - _passed(one))
        assert lost == [], failure_summary({name: one.get(name, []) for name in lost})
        assert gw.server("conf")["protocol_version"] == "2026-07-28"
        if kind == "stdio" and modern_only:
            return  # /mcp is the same whatever serves it: checked over the other three upstreams
        aggregate = run_requirements_checks(gw.url(), "2026-07-28", tmp_path / "aggregate")
        wanted = set(REQUIRED_2026) - BARE_NAMES
        lost = sorted(wanted - _passed(aggregate))
        assert lost == [], failure_summary({name: aggregate.get(name, []) for name in lost})
    finally:
        if upstream is not None:
            upstream.stop()
