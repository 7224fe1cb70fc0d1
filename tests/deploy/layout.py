"""Where the observability stack's files are in the repo, and the few readers both stack tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import REPO

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


# The Kubernetes manifests: every kustomization (bases and overlays), and the script that writes
# the files they copy from elsewhere in the repo (the PrometheusRule, the collector's config).
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = sorted(path.parent for path in K8S.rglob("kustomization.yaml"))
K8S_GENERATOR = K8S / "generate.py"
PYPROJECT = REPO / "pyproject.toml"


def flag_values(command: list[str], name: str) -> list[str]:
    """Every value of `--name value` or `--name=value` in a command line, in order."""
    values = []
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            values.append(command[i + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def collector_ports(config: dict[str, Any]) -> dict[str, int]:
    """The ports an otel-collector.yaml listens on, by role; the roles are the Kubernetes port names."""
    protocols = config["receivers"]["otlp"]["protocols"]
    [reader] = config["service"]["telemetry"]["metrics"]["readers"]
    return {
        "otlp-grpc": int(protocols["grpc"]["endpoint"].rsplit(":", 1)[1]),
        "otlp-http": int(protocols["http"]["endpoint"].rsplit(":", 1)[1]),
        "otlp-metrics": int(config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]),  # what was pushed
        "self-metrics": int(reader["pull"]["exporter"]["prometheus"]["port"]),  # the collector's own
        "health": int(config["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1]),
    }
