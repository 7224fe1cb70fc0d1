"""`docs/observability.md` kept in step with what it describes.

Every dashboard panel (in the dashboard's order), row and template variable, every alert and recording
rule, and every catalog family is named in the doc; every alert, recording rule, metric and config key
the doc names exists; promtool parses every PromQL query of its "Questions" tables.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from gateway.config import GatewaySettings, PoolConfig, TelemetryConfig
from telemetry.catalog import METRICS, Kind
from telemetry.provider import build_resource
from telemetry.settings import TelemetrySettings
from tests.deploy.layout import RULE_FILES, load_yaml
from tests.support.paths import REPO
from tests.telemetry.prometheus import binary

DOC = REPO / "docs" / "observability.md"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "mcp-gateway.json"
# The config sections the doc names keys of (`telemetry.semconv`, `gateway.auth.metrics_token`, `pool.cooldown`).
CONFIG_ROOTS: dict[str, type[BaseModel]] = {
    "telemetry": TelemetryConfig,
    "gateway": GatewaySettings,
    "pool": PoolConfig,
}
NAMING_CONVENTION = "level:metric:operations"  # how recording rules are named, not a rule
SUFFIXES = ("_bucket", "_count", "_sum")  # the sample names of a histogram family


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel in the dashboard's order, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _rule_names(kind: str) -> list[str]:
    """The names of the rules of the rule files that are `kind` ("record" or "alert")."""
    groups = [group for path in RULE_FILES for group in load_yaml(path)["groups"]]
    return [rule[kind] for group in groups for rule in group["rules"] if kind in rule]


def _token(name: str) -> re.Pattern[str]:
    """`name` as a whole token: not part of a longer name, a dotted name or a path."""
    return re.compile(rf"(?<![\w.:/-]){re.escape(name)}(?![\w:/-]|\.\w)")


def test_every_panel_is_described_in_dashboard_order() -> None:
    text, position = _doc(), 0
    for panel in _panels(_dashboard()):
        title = panel["title"]
        if panel["type"] == "row":
            assert f'Row "{title}"' in text, f'docs/observability.md has no section Row "{title}"'
            continue
        found = text.find(f"**{title}**", position)
        if found < 0 and f"**{title}**" in text:
            raise AssertionError(f"docs/observability.md describes panel **{title}** out of the dashboard's order")
        assert found >= 0, f"docs/observability.md does not mention panel **{title}**"
        position = found + len(title)


def test_every_template_variable_is_described() -> None:
    text = _doc()
    for variable in _dashboard()["templating"]["list"]:
        assert f"`${variable['name']}`" in text, f"docs/observability.md does not describe variable ${variable['name']}"


def test_every_alert_and_recording_rule_is_described() -> None:
    text = _doc()
    for kind, what in (("alert", "alert"), ("record", "recording rule")):
        for name in _rule_names(kind):
            assert f"`{name}`" in text, f"docs/observability.md does not mention {what} {name}"


def test_every_catalog_family_is_named() -> None:
    text = _doc()
    for metric in METRICS:
        assert _token(metric.name).search(text), f"docs/observability.md does not mention metric {metric.name}"


def test_every_alert_rule_and_metric_the_doc_names_exists() -> None:
    text = _doc()
    alerts = set(re.findall(r"\bMcp[A-Z]\w+", text)) - set(_rule_names("alert"))
    assert not alerts, f"docs/observability.md names alerts that alerts.yml does not define: {sorted(alerts)}"
    records = set(re.findall(r"(?<![\w:])[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", text)) - set(_rule_names("record"))
    records.discard(NAMING_CONVENTION)
    assert not records, f"docs/observability.md names recording rules recording.yml does not define: {sorted(records)}"
    histograms = [metric.name for metric in METRICS if metric.kind is Kind.HISTOGRAM]
    samples = {metric.name for metric in METRICS} | {f"{name}{suffix}" for name in histograms for suffix in SUFFIXES}
    labels = {label for metric in METRICS for label in metric.labels}
    resource = {key.replace(".", "_") for key in build_resource(TelemetrySettings(gateway_id="doc")).attributes}
    names = set(re.findall(r"(?<![\w.:])mcp_[a-z0-9_]+(?![\w.:])", text)) - samples - labels - resource
    assert not names, f"docs/observability.md names what is no catalog family, label or resource attribute: {names}"


def _has_path(model: type[BaseModel], keys: list[str]) -> bool:
    """Whether `keys` (["auth", "metrics_token"]) is a path of fields of `model` and its sub-models."""
    for index, key in enumerate(keys):
        field = model.model_fields.get(key)
        if field is None:
            return False
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return index == len(keys) - 1
        model = annotation
    return True


def test_every_config_key_the_doc_names_exists() -> None:
    roots = "|".join(CONFIG_ROOTS)
    for root, path in re.findall(rf"(?<![\w/.-])({roots})((?:\.[a-z_]+)+)", _doc()):
        keys = path.split(".")[1:]
        assert _has_path(CONFIG_ROOTS[root], keys), f"docs/observability.md names {root}{path}: no such config key"


def _questions() -> list[str]:
    """The PromQL column of every table in the "Questions" section, unescaped."""
    section = _doc().split("\n## Questions", 1)[1].split("\n## ", 1)[0]
    queries = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and cells[1].startswith("`") and cells[1].endswith("`"):
            queries.append(cells[1][1:-1].replace("\\|", "|"))
    return queries


def test_every_question_query_parses(tmp_path: Path) -> None:
    queries = _questions()
    assert len(queries) > 30, f"found only {len(queries)} queries in the Questions tables"
    rules = [{"record": f"doc_question_{n}", "expr": query} for n, query in enumerate(queries)]
    path = tmp_path / "questions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "doc", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"a query in docs/observability.md does not parse:\n{result.stdout}{result.stderr}"
