"""The Prometheus rules (`deploy/prometheus/`) checked by promtool, against the catalog, and on real data.

Offline: promtool checks the config and the rules and runs their unit tests; every alert has a unit
test that fires it and series it must stay silent on; every recording rule is evaluated by one;
every metric, label and label value a rule names is `telemetry/catalog.py`'s. Live: the gateway on
the stack's config, the stack's Prometheus config with its targets moved to loopback (the OTLP job's
at a port where nothing listens), the stack's load script; every recording rule must record a
series, and the only alert that may go pending is the one for the target that is down.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from telemetry.catalog import METRICS, Kind, Metric
from tests.deploy.layout import (
    DIRECT_JOB,
    GATEWAY_CONFIG,
    LOAD_SCRIPT,
    OTLP_JOB,
    PROMETHEUS_CONFIG,
    RULE_FILES,
    UNIT_TESTS,
    load_yaml,
    scrape_targets,
)
from tests.support.paths import PY, REPO
from tests.support.processes import Gateway, free_port, start_gateway, stop_gateway
from tests.support.waiting import wait_for
from tests.telemetry.prometheus import Prometheus, binary, run_prometheus

# Labels Prometheus adds to every scraped series: the target's, and the collector's own job and
# instance, renamed because the scrape's win (honor_labels: false).
TARGET_LABELS = frozenset({"job", "instance", "exported_job", "exported_instance"})
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of the rule files that is `kind` ("record" or "alert"), in file order."""
    return [
        rule for path in RULE_FILES for group in load_yaml(path)["groups"] for rule in group["rules"] if kind in rule
    ]


def _promtool(*args: str | Path) -> str:
    result = subprocess.run(
        [binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


# -- 1. promtool ---------------------------------------------------------------------------------


def test_promtool_accepts_the_config_and_finds_every_rule_file() -> None:
    assert RULE_FILES, "no rule files in deploy/prometheus/rules"
    output = _promtool("check", "config", PROMETHEUS_CONFIG)
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in output, output


def test_promtool_accepts_the_rules() -> None:
    _promtool("check", "rules", *RULE_FILES)


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    output = _promtool("test", "rules", *UNIT_TESTS)
    assert output.count("SUCCESS") == len(UNIT_TESTS), output


# -- 2. what the unit tests cover ------------------------------------------------------------------

_LABEL = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def _series_labels(series: str) -> dict[str, str]:
    return {name: value for name, _, value in _LABEL.findall(series)}


def _unit_tests() -> list[dict[str, Any]]:
    return [test for path in UNIT_TESTS for test in load_yaml(path)["tests"]]


def test_every_alert_is_tested_firing_and_silent() -> None:
    """Each alert fires in some unit test, and that test feeds it series it must stay silent on."""
    for alert in (rule["alert"] for rule in _rules("alert")):
        fired: list[dict[str, str]] = []
        fed: list[dict[str, str]] = []
        for test in _unit_tests():
            cases = [case for case in test.get("alert_rule_test", []) if case["alertname"] == alert]
            if cases:
                fired += [expected["exp_labels"] for case in cases for expected in case.get("exp_alerts") or []]
                fed += [_series_labels(series["series"]) for series in test["input_series"]]
        assert fired, f"{alert}: no unit test expects it to fire"
        key = "server_id" if all("server_id" in labels for labels in fired) else "instance"
        silent = {labels.get(key) for labels in fed} - {labels[key] for labels in fired}
        assert silent, f"{alert}: its unit tests feed it no series ({key}) it should stay silent on"


def test_every_recording_rule_is_unit_tested() -> None:
    exprs = [case["expr"] for test in _unit_tests() for case in test.get("promql_expr_test", [])]
    for record in {rule["record"] for rule in _rules("record")}:
        name = re.compile(rf"(?<![\w:]){re.escape(record)}(?![\w:])")
        assert any(name.search(expr) for expr in exprs), f"{record}: no promql_expr_test evaluates it"


def test_alerts_carry_a_severity_and_a_runbook() -> None:
    for rule in _rules("alert"):
        assert rule.get("labels", {}).get("severity") in ("critical", "warning"), rule["alert"]
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook"} <= annotations.keys(), rule["alert"]
        steps = [line for line in annotations["runbook"].splitlines() if re.match(r"\d+\. ", line)]
        assert len(steps) >= 3, f"{rule['alert']}: a runbook of numbered steps, please"


# -- 3. every metric and label a rule names is the catalog's ---------------------------------------

_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"})


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


def _parse(expr: str) -> tuple[list[Selector], set[str]]:
    """The series selectors of a PromQL expression and the labels of its by/on/... clauses.

    A scanner, not a parser: enough for rule files, where a wrong answer fails the test loudly.
    """
    grouping = {label.strip() for clause in _GROUPING.findall(expr) for label in clause.split(",") if label.strip()}
    selectors = []
    for match in _SELECTOR.finditer(expr):
        matchers = tuple(_LABEL.findall(match.group(2)))
        name = match.group(1) or next((value for label, _, value in matchers if label == "__name__"), "")
        selectors.append(Selector(name, tuple(m for m in matchers if m[0] != "__name__")))
    bare = _SELECTOR.sub(lambda m: m.group(1) or "", expr)
    bare = _GROUPING.sub("", re.sub(r"\[[^\]]*\]", "", re.sub(r'"(?:[^"\\]|\\.)*"', '""', bare)))
    for match in _IDENTIFIER.finditer(bare):
        rest = bare[match.end() :].lstrip()
        if match.group(1) not in _KEYWORDS and not rest.startswith("("):  # functions and aggregations
            selectors.append(Selector(match.group(1), ()))
    return selectors, grouping


def _samples() -> dict[str, Metric]:
    """Every sample name /metrics can show, to its family: histograms add _bucket, _count, _sum."""
    samples = {}
    for metric in METRICS:
        samples[metric.name] = metric
        if metric.kind is Kind.HISTOGRAM:
            samples.update({metric.name + suffix: metric for suffix in HISTOGRAM_SUFFIXES})
    return samples


def test_rules_name_only_catalog_metrics_labels_and_values() -> None:
    samples = _samples()
    recorded: dict[str, set[str]] = {}  # recording rule name -> the labels its series can carry
    for rule in _rules("record") + _rules("alert"):
        what = rule.get("record") or rule["alert"]
        selectors, grouping = _parse(rule["expr"])
        known = set(TARGET_LABELS)
        for selector in selectors:
            known |= _selector_labels(what, selector, samples, recorded)
        assert grouping <= known, f"{what}: groups by {sorted(grouping - known)}, which its series do not carry"
        if "record" in rule:
            recorded[rule["record"]] = recorded.get(rule["record"], set()) | grouping | set(rule.get("labels", {}))
            for selector in selectors:
                recorded[rule["record"]] |= recorded.get(selector.name, set())


def _selector_labels(what: str, selector: Any, samples: dict[str, Metric], recorded: dict[str, set[str]]) -> set[str]:
    """The labels one selector's series carry, after checking its matchers name labels (and values) they have."""
    if selector.name in samples:
        metric = samples[selector.name]
        labels = set(metric.labels) | TARGET_LABELS | ({"le"} if selector.name.endswith("_bucket") else set())
        for label, operator, value in selector.matchers:
            assert label in labels, f"{what}: {selector.name} has no label {label!r}"
            closed = metric.values.get(label)
            if closed and operator in ("=", "=~") and re.fullmatch(r"[\w/|-]+", value):
                assert set(value.split("|")) <= set(closed), f"{what}: {label}={value!r} not in {closed}"
        return labels
    if selector.name in recorded:
        labels = recorded[selector.name] | TARGET_LABELS
        for label, _, _ in selector.matchers:
            assert label in labels, f"{what}: {selector.name} records no label {label!r}"
        return labels
    if selector.name == "up":
        assert {label for label, _, _ in selector.matchers} <= {"job", "instance"}, what
        for label, _, value in selector.matchers:
            if label == "job":
                assert set(value.split("|")) <= scrape_targets().keys(), f"{what}: job {value!r} is not scraped"
        return set()
    raise AssertionError(f"{what}: {selector.name!r} is neither in telemetry/catalog.py nor recorded")


# Recorded "metrics" that are sums of catalog families rather than one of them.
DERIVED = {"mcp_session_pool_acquisitions": "mcp_session_pool_hits_total + mcp_session_pool_misses_total"}


def test_recording_rule_names_say_their_labels_and_metric() -> None:
    """level:metric:operations, where level is the by-labels and metric a catalog family."""
    samples = _samples()
    for rule in _rules("record"):
        level, metric, operations = rule["record"].split(":")
        family = metric in samples or metric + "_total" in samples or metric in DERIVED
        assert family, f"{rule['record']}: {metric} is not a catalog family"
        assert operations, rule["record"]
        outer = re.match(r"\s*\w+ by \(([^()]*)\)", rule["expr"])
        if outer:
            assert level == "_".join(label.strip() for label in outer.group(1).split(",")), rule["record"]


def test_runbooks_name_only_catalog_metrics() -> None:
    samples = _samples()
    for rule in _rules("alert"):
        for text in rule["annotations"].values():
            for name in re.findall(r"\bmcp_\w+", text):
                assert name in samples, f"{rule['alert']}: its annotations name {name}, which is not in the catalog"


# -- 4. the rules on real data ----------------------------------------------------------------------


@dataclass
class Stack:
    gw: Gateway
    prometheus: Prometheus
    dead_port: int  # the OTLP path's target: nothing listens there, so its scrapes fail
    sent: dict[str, int]


def _deploy_config(gw_port: int, dead_port: int) -> dict[str, Any]:
    """The stack's Prometheus config on loopback: every second, the repo's rule files, the gateway's
    job at the test gateway and the OTLP job at a port nothing listens on (no collector runs here)."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"] |= {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(path) for path in RULE_FILES]
    loopback = {DIRECT_JOB: f"127.0.0.1:{gw_port}", OTLP_JOB: f"127.0.0.1:{dead_port}"}
    config["scrape_configs"] = [
        job | {"static_configs": [{"targets": [loopback[job["job_name"]]]}]}
        for job in config["scrape_configs"]
        if job["job_name"] in loopback
    ]
    return dict(config)


def _reload(prometheus: Prometheus, workdir: Path, config: dict[str, Any]) -> None:
    """Swap the running Prometheus's config for `config` (SIGHUP reloads it) and wait for its rules."""
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus.proc.send_signal(signal.SIGHUP)
    groups = {group["name"] for path in RULE_FILES for group in load_yaml(path)["groups"]}

    def loaded() -> bool:
        response = httpx.get(f"{prometheus.base}/api/v1/rules", timeout=10)
        return {group["name"] for group in response.json()["data"]["groups"]} == groups

    try:
        wait_for(loaded, 30, "the stack's rules to load")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{prometheus.log()}") from None


def _load(gw: Gateway, rounds: int) -> dict[str, int]:
    """The stack's load script against the test gateway; what it sent, by 'server tool outcome'."""
    environment = {"GATEWAY_URL": gw.base, "LOAD_ROUNDS": str(rounds), "LOAD_PAUSE": "0.05", "LOAD_SERVERS": "demo"}
    result = subprocess.run(
        [PY, str(LOAD_SCRIPT)], capture_output=True, text=True, timeout=180, env={**os.environ, **environment}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return dict(summary["sent"])


_DEMO_CALLS = 'sum(mcp_gateway_requests_total{server_id="demo",method="tools/call"})'
_DEMO_ERRORS = 'sum(mcp_gateway_errors_total{server_id="demo"})'


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    compose_config = load_yaml(GATEWAY_CONFIG)
    servers = {sid: server | {"command": PY} for sid, server in compose_config["servers"].items()}
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), servers, {"id": compose_config["gateway"]["id"]})
    try:
        workdir = tmp_path_factory.mktemp("prometheus")
        with run_prometheus(workdir, [f"127.0.0.1:{gw.port}"], job=DIRECT_JOB) as prometheus:
            dead_port = free_port()
            _reload(prometheus, workdir, _deploy_config(gw.port, dead_port))
            prometheus.wait_for_value(f'up{{job="{DIRECT_JOB}"}}', 1)
            # Twice, with Prometheus seeing the first run's counters in between: a counter's first
            # sample is where rate() starts, so errors that all came before it would rate 0.
            sent: Counter[str] = Counter()
            for _ in range(2):
                sent.update(_load(gw, rounds=10))
                calls = sum(count for key, count in sent.items() if key.startswith("demo "))
                prometheus.wait_for_value(_DEMO_CALLS, calls, timeout=60)
                prometheus.wait_for_value(_DEMO_ERRORS, sent["demo fail error"], timeout=60)
            yield Stack(gw, prometheus, dead_port, dict(sent))
    finally:
        stop_gateway(gw)


def _finite(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in results if not math.isnan(item["value"])]


def _finite_of(prometheus: Prometheus, query: str) -> list[dict[str, Any]]:
    return _finite(prometheus.query(query))


def test_every_recording_rule_records_a_series_from_real_traffic(stack: Stack) -> None:
    assert stack.sent.get("demo fail error") == 2, stack.sent  # round 10 of each run: the error ratio has errors
    for rule in _rules("record"):
        matchers = ",".join(f'{k}="{v}"' for k, v in {"job": DIRECT_JOB, **rule.get("labels", {})}.items())
        query = f"{rule['record']}{{{matchers}}}"
        found = wait_for(functools.partial(_finite_of, stack.prometheus, query), 30, f"a series of {query}")
        by_server = {item["metric"].get("server_id"): item["value"] for item in found}
        assert "demo" in by_server, f"{query}: {found}"
    # Values, once the rules have evaluated on the scrape that saw the last errors.
    ratio = f'job_server_id:mcp_gateway_errors:ratio_rate5m{{job="{DIRECT_JOB}",server_id="demo"}}'
    [errors] = wait_for(lambda: [r for r in stack.prometheus.query(ratio) if r["value"] > 0], 30, ratio)
    assert errors["value"] < 0.2, errors  # 2 failing calls in about 80 requests
    hit_ratio = f'job_gateway_id_server_id:mcp_session_pool_hits:ratio_rate5m{{job="{DIRECT_JOB}",server_id="demo"}}'
    [hits] = stack.prometheus.query(hit_ratio)
    assert hits["metric"]["gateway_id"] == "compose-gw" and 0.5 < hits["value"] <= 1, hits


def test_only_the_down_target_alert_goes_pending(stack: Stack) -> None:
    """Normal traffic trips no alert; the OTLP job's dead target trips McpGatewayTargetDown, and only it."""

    def active() -> list[dict[str, Any]]:
        response = httpx.get(f"{stack.prometheus.base}/api/v1/alerts", timeout=10)
        return list(response.json()["data"]["alerts"])

    [alert] = wait_for(active, 30, "McpGatewayTargetDown for the OTLP job")
    assert alert["labels"]["alertname"] == "McpGatewayTargetDown", alert
    assert alert["labels"]["job"] == OTLP_JOB and alert["labels"]["instance"] == f"127.0.0.1:{stack.dead_port}"
    assert alert["state"] == "pending", alert  # for: 2m
    assert alert["annotations"]["summary"] == f"Prometheus cannot scrape {OTLP_JOB} at 127.0.0.1:{stack.dead_port}"
