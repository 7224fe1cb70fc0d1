"""The MCP conformance suite, against server-everything directly and through the gateway.

Directly, about a third of the scenarios pass (the rest expect the suite's own fixture tools);
every one of those must pass through `/servers/everything/mcp` as well, and the generic
scenarios must pass against the aggregated `/mcp`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conformance.runner import (
    failure_summary,
    free_port,
    minimal_env,
    run_scenarios_checks,
    scenario_passed,
    start_server_everything_http,
    stop_process,
)
from tests.support.processes import everything_server

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
