"""Where the observability stack's files are in the repo, and the few readers both stack tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
COLLECTOR = REPO / "otel-collector.yaml"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GATEWAY_CONFIG = REPO / "deploy" / "compose" / "gateway.yaml"
LOAD_SCRIPT = REPO / "deploy" / "compose" / "load.py"
GRAFANA_PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"

# The two paths from the gateway to Prometheus, each scraped under its own job.
DIRECT_JOB, OTLP_JOB = "mcp-gateway", "mcp-gateway-otlp"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def scrape_targets() -> dict[str, list[str]]:
    """prometheus.yml's jobs and their static targets (host:port)."""
    return {
        job["job_name"]: [target for static in job["static_configs"] for target in static["targets"]]
        for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    }
