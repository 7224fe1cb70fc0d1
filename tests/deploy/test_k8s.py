"""The Kubernetes manifests (`deploy/k8s/`), rendered by kustomize and checked offline.

Every kustomization renders with Debian's kubectl (its kustomize v2.0.3, the oldest the files are
written for). Core kinds pass kubernetes-validate --strict; ServiceMonitor, PodMonitor and
PrometheusRule load into prometheus-operator's models without losing a key. Then the parts must
agree with each other and with the rest of the repo: names, selectors and ports resolve; the
gateway's config loads as the gateway loads it; probes, shutdown and the security context fit the
gateway; the monitors scrape the jobs the rules select; the rules are deploy/prometheus/'s and the
collector's config is otel-collector.yaml; the images are the project's and compose's.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as operator
from pydantic import ValidationError

from gateway import __version__
from gateway.config import Config, load_config
from telemetry.provider import build_resource
from telemetry.settings import TelemetrySettings
from tests.deploy.layout import (
    COLLECTOR,
    COMPOSE,
    DIRECT_JOB,
    DOCKERFILE,
    K8S,
    K8S_GENERATOR,
    KUSTOMIZATIONS,
    OTLP_JOB,
    RULE_FILES,
    collector_ports,
    flag_values,
    load_yaml,
    scrape_targets,
)
from tests.support.paths import PY, REPO, TOOLS

KUBECTL = TOOLS / "bin" / "kubectl"
# The oldest Kubernetes the manifests are for and the newest kubernetes-validate (pinned) knows.
KUBERNETES_VERSIONS = ("1.28.0", "1.37.0")
CORE_KINDS = {"ConfigMap", "Deployment", "Service"}
OPERATOR_MODELS = {
    "ServiceMonitor": operator.ServiceMonitor,
    "PodMonitor": operator.PodMonitor,
    "PrometheusRule": operator.PrometheusRule,
}

FULL = K8S / "overlays" / "with-collector"  # the gateway, its ServiceMonitor and the collector
POD_MONITOR = K8S / "overlays" / "podmonitor"
POD_NAME = "mcp-gateway-5d8c7b9f4-x2x9q"
HARDENED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}

Doc = dict[str, Any]


# -- rendering ----------------------------------------------------------------------------------


@functools.cache
def _render(directory: Path) -> tuple[Doc, ...]:
    assert KUBECTL.exists(), "kubectl is missing: run `make test` (scripts/install-tools.sh puts it in .tools/bin)"
    result = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory.relative_to(REPO)} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _all(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [doc for doc in _all(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"no one {kind} {name!r} among {[(d['kind'], d['metadata']['name']) for d in docs]}"
    return found[0]


def _pod(deployment: Doc) -> Doc:
    return dict(deployment["spec"]["template"]["spec"])


def _container(docs: tuple[Doc, ...], deployment: str) -> Doc:
    [container] = _pod(_one(docs, "Deployment", deployment))["containers"]
    return dict(container)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def _containers(docs: tuple[Doc, ...], selector: dict[str, str]) -> list[Doc]:
    """The containers of the pods `selector` selects."""
    templates = [d["spec"]["template"] for d in _all(docs, "Deployment")]
    return [c for t in templates if _selects(selector, t["metadata"]["labels"]) for c in t["spec"]["containers"]]


def _environment(container: Doc, pod_name: str = POD_NAME) -> dict[str, str]:
    """The container's environment as the kubelet builds it: downward-API fields filled in, and
    $(VAR) expanded from the variables defined before it (a later one stays as written)."""
    fields = {"metadata.name": pod_name, "metadata.namespace": "default"}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _mounted(docs: tuple[Doc, ...], deployment: str, path: str) -> str:
    """The text of the file at `path` in the deployment's container: a key of a mounted ConfigMap."""
    pod = _pod(_one(docs, "Deployment", deployment))
    [mount] = [m for m in pod["containers"][0].get("volumeMounts", []) if path.startswith(m["mountPath"] + "/")]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    data = _one(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    key = path.removeprefix(mount["mountPath"] + "/")
    assert key in data, f"{deployment}: {path} is not a key of ConfigMap {volume['configMap']['name']}"
    return str(data[key])


def _gateway_config(tmp_path: Path) -> tuple[Config, Doc]:
    """The gateway's config loaded as `mcp-gateway serve --config` loads it in the pod, and its container."""
    docs = _render(FULL)
    container = _container(docs, "mcp-gateway")
    [path] = flag_values(container["args"], "--config")
    local = tmp_path / Path(path).name
    local.write_text(_mounted(docs, "mcp-gateway", path), encoding="utf-8")
    return load_config(local, env=_environment(container)), container


def _named_port(container: Doc, name: str) -> int:
    ports = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port named {name!r}: {ports}"
    return int(ports[name])


def _job(endpoint: Doc) -> str | None:
    """The job a monitor's endpoint scrapes as, when its relabelings set one."""
    jobs = [r.get("replacement") for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"]
    return jobs[-1] if jobs else None


# -- 1. the tools: render, Kubernetes schemas, prometheus-operator schemas ----------------------


def test_kustomizations_are_found() -> None:
    found = {str(path.relative_to(K8S)) for path in KUSTOMIZATIONS}
    expected = {"base", "collector", "overlays/servicemonitor", "overlays/podmonitor", "overlays/with-collector"}
    assert expected <= found, f"missing kustomizations: {sorted(expected - found)}"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(K8S)))
def test_every_kustomization_renders_only_kinds_that_are_checked(directory: Path) -> None:
    docs = _render(directory)
    assert docs, f"{directory.relative_to(REPO)} renders nothing"
    unchecked = {doc["kind"] for doc in docs} - CORE_KINDS - OPERATOR_MODELS.keys()
    assert not unchecked, f"{directory.relative_to(REPO)} renders kinds no test validates: {unchecked}"


def _kubernetes_validate(files: list[Path]) -> subprocess.CompletedProcess[str]:
    versions = [arg for version in KUBERNETES_VERSIONS for arg in ("-k", version)]
    command = [PY, "-m", "kubernetes_validate", "--strict", "--quiet", *versions, *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_core_kinds_pass_kubernetes_validate_strict(tmp_path: Path) -> None:
    files = []
    for directory in KUSTOMIZATIONS:
        core = [doc for doc in _render(directory) if doc["kind"] in CORE_KINDS]
        files.append(tmp_path / (str(directory.relative_to(K8S)).replace("/", "-") + ".yaml"))
        files[-1].write_text(yaml.safe_dump_all(core), encoding="utf-8")
    result = _kubernetes_validate(files)
    assert result.returncode == 0, f"kubernetes-validate --strict:\n{result.stdout}{result.stderr}"


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path: Path) -> None:
    """Without --strict a misspelled field passes; the check above relies on the flag."""
    deployment = copy.deepcopy(_one(_render(FULL), "Deployment", "mcp-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    path = tmp_path / "misspelled.yaml"
    path.write_text(yaml.safe_dump(deployment), encoding="utf-8")
    result = _kubernetes_validate([path])
    assert result.returncode != 0 and "'livenesProbe' was unexpected" in result.stdout, result.stdout + result.stderr


def _differences(sent: Any, kept: Any, where: str) -> Iterator[str]:
    if isinstance(sent, dict) and isinstance(kept, dict):
        for key, value in sent.items():
            if key not in kept:
                yield f"{where}.{key}: unknown key"
            else:
                yield from _differences(value, kept[key], f"{where}.{key}")
    elif isinstance(sent, list) and isinstance(kept, list) and len(sent) == len(kept):
        for i, (a, b) in enumerate(zip(sent, kept, strict=True)):
            yield from _differences(a, b, f"{where}[{i}]")
    elif sent != kept:
        yield f"{where}: {sent!r} was read as {kept!r}"


def _operator_problems(doc: Doc) -> list[str]:
    """What prometheus-operator's CRD schema says is wrong with `doc`. The models ignore unknown
    keys, so a key they dropped (a misspelling) is a problem too, found by dumping the model back."""
    model = OPERATOR_MODELS[doc["kind"]]
    try:
        parsed = model.model_validate_json(json.dumps(doc), strict=True)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return list(_differences(doc, parsed.model_dump(mode="json", by_alias=True, exclude_unset=True), doc["kind"]))


def test_monitoring_kinds_match_the_prometheus_operator_schema() -> None:
    checked = set()
    for directory in KUSTOMIZATIONS:
        for doc in _render(directory):
            if doc["kind"] in OPERATOR_MODELS:
                where = f"{directory.relative_to(REPO)}: {doc['kind']} {doc['metadata']['name']}"
                assert not (problems := _operator_problems(doc)), f"{where}: {problems}"
                checked.add(doc["kind"])
    assert checked == OPERATOR_MODELS.keys(), f"rendered no {sorted(OPERATOR_MODELS.keys() - checked)}"


def test_the_operator_schema_check_catches_misspelled_keys_and_wrong_types() -> None:
    monitor = _one(_render(FULL), "ServiceMonitor", "mcp-gateway")
    misspelled = copy.deepcopy(monitor)
    misspelled["spec"]["endpoints"][0]["relabeling"] = misspelled["spec"]["endpoints"][0].pop("relabelings")
    assert _operator_problems(misspelled) == ["ServiceMonitor.spec.endpoints[0].relabeling: unknown key"]
    mistyped = copy.deepcopy(monitor)
    mistyped["spec"]["endpoints"][0]["interval"] = 15
    assert _operator_problems(mistyped) == ["spec.endpoints.0.interval: Input should be a valid string"]


# -- 2. the parts agree -------------------------------------------------------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(K8S)))
def test_selectors_ports_and_config_maps_resolve(directory: Path) -> None:
    docs = _render(directory)
    _deployments_resolve(docs)
    _services_resolve(docs)
    _monitors_resolve(docs)


def _deployments_resolve(docs: tuple[Doc, ...]) -> None:
    """Each Deployment selects its own pods; its probes name container ports; its ConfigMaps exist."""
    for deployment in _all(docs, "Deployment"):
        name, template = deployment["metadata"]["name"], deployment["spec"]["template"]
        assert _selects(deployment["spec"]["selector"]["matchLabels"], template["metadata"]["labels"]), name
        for container in template["spec"]["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    _named_port(container, container[probe]["httpGet"]["port"])
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                _one(docs, "ConfigMap", volume["configMap"]["name"])


def _services_resolve(docs: tuple[Doc, ...]) -> None:
    for service in _all(docs, "Service"):
        containers = _containers(docs, service["spec"]["selector"])
        assert containers, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for container in containers:
                _named_port(container, port["targetPort"])


def _monitors_resolve(docs: tuple[Doc, ...]) -> None:
    """ServiceMonitors select Services and name their ports; PodMonitors select pods and name theirs."""
    for monitor in _all(docs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in _all(docs, "Service") if _selects(selector, s["metadata"]["labels"])]
        assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            for service in services:
                names = {port["name"] for port in service["spec"]["ports"]}
                assert endpoint["port"] in names, f"ServiceMonitor port {endpoint['port']!r} is not one of {names}"
    for monitor in _all(docs, "PodMonitor"):
        containers = _containers(docs, monitor["spec"]["selector"]["matchLabels"])
        assert containers, f"PodMonitor {monitor['metadata']['name']} selects no pod"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for container in containers:
                _named_port(container, endpoint["port"])


def test_generated_files_are_up_to_date() -> None:
    result = subprocess.run([PY, str(K8S_GENERATOR), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_prometheus_rule_is_deploy_prometheus_rules() -> None:
    [rule] = _all(_render(FULL), "PrometheusRule")
    groups = [group for path in RULE_FILES for group in load_yaml(path)["groups"]]
    assert rule["spec"]["groups"] == groups, "the PrometheusRule differs from deploy/prometheus/rules/*.yml"


def test_the_gateway_config_loads_and_the_container_serves_it(tmp_path: Path) -> None:
    config, container = _gateway_config(tmp_path)
    args = container["args"]
    host = (flag_values(args, "--host") or [config.gateway.host])[-1]
    port = int((flag_values(args, "--port") or [str(config.gateway.port)])[-1])
    assert host not in ("127.0.0.1", "localhost", "::1"), f"the gateway binds {host}: unreachable from outside"
    assert _named_port(container, "http") == port, f"container port http is not the gateway's port {port}"


def test_probes_ask_healthz_and_readyz_and_startup_waits_for_eager_servers(tmp_path: Path) -> None:
    config, container = _gateway_config(tmp_path)
    probes = {probe: container[probe]["httpGet"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths = {probe: get["path"] for probe, get in probes.items()}
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}, paths
    assert {get["port"] for get in probes.values()} == {"http"}, probes
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    slowest = max((s.start_timeout for s in config.servers.values() if not s.lazy), default=0.0)
    assert budget > slowest, f"the startup probe gives up after {budget}s; an eager server may take {slowest}s"


def test_termination_grace_covers_prestop_and_the_drain(tmp_path: Path) -> None:
    config, container = _gateway_config(tmp_path)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"preStop is not a plain pause: {command}"
    pause, drain = float(command[1]), config.gateway.limits.drain_timeout
    grace = _pod(_one(_render(FULL), "Deployment", "mcp-gateway"))["terminationGracePeriodSeconds"]
    assert grace > pause + drain, f"terminationGracePeriodSeconds {grace} <= preStop {pause}s + drain_timeout {drain}s"


def test_pods_run_as_non_root_with_nothing_to_escalate() -> None:
    uid = re.search(r"^USER (\d+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert uid, "the Dockerfile sets no numeric USER"
    for deployment in _all(_render(FULL), "Deployment"):
        name, pod = deployment["metadata"]["name"], _pod(deployment)
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] > 0, f"{name}: {security}"
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, f"{name}: {security}"
        assert pod.get("automountServiceAccountToken") is False, f"{name} mounts an API token it does not use"
        for container in pod["containers"]:
            found = container["securityContext"]
            assert found == HARDENED, f"{name}/{container['name']}: securityContext {found}, not {HARDENED}"
    gateway = _pod(_one(_render(FULL), "Deployment", "mcp-gateway"))
    assert gateway["securityContext"]["runAsUser"] == int(uid.group(1)), "the gateway's uid is not the Dockerfile's"
    tmp = [m for m in gateway["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp, "the gateway's root filesystem is read-only and /tmp is not mounted writable"


def test_every_container_has_requests_and_limits() -> None:
    for container in (c for d in _all(_render(FULL), "Deployment") for c in _pod(d)["containers"]):
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            assert set(resources.get(bound, {})) == {"cpu", "memory"}, f"{container['name']}: {bound} {resources}"


def test_monitors_scrape_the_jobs_the_rules_select(tmp_path: Path) -> None:
    """The gateway's /metrics as mcp-gateway and the collector's exporter as mcp-gateway-otlp, the
    exporter's own instance kept as exported_instance: the labels deploy/prometheus/rules use."""
    config, _ = _gateway_config(tmp_path)
    docs = _render(FULL)
    gateway_endpoints = _one(docs, "ServiceMonitor", "mcp-gateway")["spec"]["endpoints"]
    gateway_endpoints += _one(_render(POD_MONITOR), "PodMonitor", "mcp-gateway")["spec"]["podMetricsEndpoints"]
    for endpoint in gateway_endpoints:
        assert _job(endpoint) == DIRECT_JOB, f"the gateway is scraped as job {_job(endpoint)!r}, not {DIRECT_JOB!r}"
        assert endpoint.get("path", "/metrics") == "/metrics", f"the gateway is scraped at {endpoint['path']}"
        if config.gateway.auth.metrics_token:
            assert "authorization" in endpoint, "gateway.auth.metrics_token is set; the monitors send no token"
    collector = _container(docs, "otel-collector")
    service_ports = {p["name"]: p["targetPort"] for p in _one(docs, "Service", "otel-collector")["spec"]["ports"]}
    exporter = collector_ports(load_yaml(COLLECTOR))["otlp-metrics"]
    jobs = {DIRECT_JOB}
    for endpoint in _one(docs, "ServiceMonitor", "otel-collector")["spec"]["endpoints"]:
        jobs.add(str(_job(endpoint)))
        if _named_port(collector, service_ports[endpoint["port"]]) == exporter:
            assert _job(endpoint) == OTLP_JOB, f"the exporter is scraped as job {_job(endpoint)!r}, not {OTLP_JOB!r}"
            assert not endpoint.get("honorLabels"), "honorLabels: the pushed job/instance would replace the scrape's"
    assert jobs == scrape_targets().keys() - {"prometheus"}, f"jobs {jobs} are not prometheus.yml's"


def test_the_service_keeps_a_client_on_one_pod_as_long_as_its_session(tmp_path: Path) -> None:
    config, _ = _gateway_config(tmp_path)
    spec = _one(_render(FULL), "Service", "mcp-gateway")["spec"]
    assert spec["sessionAffinity"] == "ClientIP", "sessions live in one pod: the Service needs ClientIP affinity"
    timeout = spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
    idle = config.gateway.limits.session_idle_timeout
    assert timeout >= idle, f"affinity ends after {timeout}s, a session lives {idle}s unused"


def test_the_collector_runs_otel_collector_yaml_and_listens_where_it_says() -> None:
    docs = _render(FULL)
    container = _container(docs, "otel-collector")
    [base, override] = flag_values(container["args"], "--config")
    assert _mounted(docs, "otel-collector", base) == COLLECTOR.read_text(encoding="utf-8"), (
        "the collector's config is not otel-collector.yaml: run `python deploy/k8s/generate.py`"
    )
    config = load_yaml(COLLECTOR)
    for port, expected in collector_ports(config).items():
        assert _named_port(container, port) == expected, f"collector port {port} is not otel-collector.yaml's"

    def keys(tree: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
        if not isinstance(tree, dict):
            return {prefix}
        return {path for key, value in tree.items() for path in keys(value, (*prefix, key))}

    extra = keys(yaml.safe_load(_mounted(docs, "otel-collector", override))) - keys(config)
    assert not extra, f"the Kubernetes override sets keys otel-collector.yaml does not have: {extra}"
    memory, limit = container["resources"]["limits"]["memory"], config["processors"]["memory_limiter"]["limit_mib"]
    assert memory.endswith("Mi") and int(memory[:-2]) > limit, f"memory limit {memory}, memory_limiter's {limit} MiB"


def test_the_gateway_pushes_otlp_to_the_collector_service() -> None:
    docs = _render(FULL)
    env = _environment(_container(docs, "mcp-gateway"))
    match = re.fullmatch(r"http://([\w-]+):(\d+)", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert match and env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf", env
    ports = {p["port"]: p["targetPort"] for p in _one(docs, "Service", match.group(1))["spec"]["ports"]}
    target = _named_port(_container(docs, "otel-collector"), ports[int(match.group(2))])
    assert target == collector_ports(load_yaml(COLLECTOR))["otlp-http"], f"{match.group(0)} is not the OTLP/HTTP port"


def test_each_replica_pushes_as_its_own_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    """service.instance.id is the pod's name (exported_instance on the OTLP path), set through
    OTEL_RESOURCE_ATTRIBUTES from the downward API."""
    env = _environment(_container(_render(FULL), "mcp-gateway"))
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", env["OTEL_RESOURCE_ATTRIBUTES"])
    attributes = build_resource(TelemetrySettings(gateway_id="mcp-gateway")).attributes
    assert attributes.get("service.instance.id") == POD_NAME, f"the gateway's resource: {dict(attributes)}"


def test_images_are_the_projects_version_and_composes_collector() -> None:
    version = __version__  # the project's one version (pyproject.toml reads it from there too)
    docs = _render(FULL)
    assert _container(docs, "mcp-gateway")["image"] == f"mcp-gateway:{version}", "the gateway image is not the version"
    compose = load_yaml(COMPOSE)["services"]["otel-collector"]["image"]
    assert _container(docs, "otel-collector")["image"] == compose, "the collector image is not docker-compose.yml's"
