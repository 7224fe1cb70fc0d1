"""The compose stack (`docker-compose.yml`, `Dockerfile`, `.dockerignore`, `otel-collector.yaml`) checked
without Docker, which cannot run where the tests do.

The compose file against the compose spec (and `docker compose config` where a Docker CLI with
compose exists); every mounted file and build input against the repo; every address and published
port against the config that listens on it; the collector's pipelines against its components; the
Dockerfile against `make run`, down to a wheel built from exactly the files it copies, and its
HEALTHCHECK command run against a live gateway and a dead port.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from gateway.config import load_config
from gateway.observability import telemetry_settings
from tests.deploy.layout import (
    COLLECTOR,
    COMPOSE,
    DIRECT_JOB,
    DOCKERFILE,
    GATEWAY_CONFIG,
    GRAFANA_PROVISIONING,
    LOAD_SCRIPT,
    OTLP_JOB,
    PROMETHEUS_CONFIG,
    RULE_FILES,
    load_yaml,
    scrape_targets,
)
from tests.support.paths import PY, REPO
from tests.support.processes import Gateway, demo_server, free_port

# -- 1. docker-compose.yml ----------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE))


@dataclass(frozen=True)
class Mount:
    target: str
    source: Path | None  # None: a named volume


def _mounts(service: dict[str, Any]) -> list[Mount]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            bind = source.startswith((".", "/"))
        else:
            source, target, bind = volume["source"], volume["target"], volume.get("type") == "bind"
        mounts.append(Mount(target, (REPO / source).resolve() if bind else None))
    return mounts


def _in_container(service: dict[str, Any], path: str) -> Path | None:
    """The repo file that `path` is inside the service's container, through its bind mounts."""
    for mount in sorted(_mounts(service), key=lambda m: len(m.target), reverse=True):
        if mount.source is not None and (path == mount.target or path.startswith(mount.target.rstrip("/") + "/")):
            return mount.source / PurePosixPath(path).relative_to(mount.target)
    return None


def _flag(command: list[str], name: str) -> str | None:
    """The value of `--name value` or `--name=value` in a command line."""
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _collector_ports(collector: dict[str, Any]) -> dict[str, int]:
    protocols = collector["receivers"]["otlp"]["protocols"]
    [reader] = collector["service"]["telemetry"]["metrics"]["readers"]
    return {
        "otlp-grpc": _port(protocols["grpc"]["endpoint"]),
        "otlp-http": _port(protocols["http"]["endpoint"]),
        "prometheus-exporter": _port(collector["exporters"]["prometheus"]["endpoint"]),
        "internal-metrics": reader["pull"]["exporter"]["prometheus"]["port"],
        "health": _port(collector["extensions"]["health_check"]["endpoint"]),
    }


def _listening(name: str, service: dict[str, Any]) -> set[int]:
    """The ports a compose service's process listens on, read from the config that decides it."""
    command = service.get("command") or []
    if name == "gateway":
        return {int(_flag(command, "--port") or 8080)}
    if name == "otel-collector":
        config = _in_container(service, _flag(command, "--config") or "")
        assert config is not None and config.exists(), f"the collector's --config is not a mounted file: {command}"
        return set(_collector_ports(load_yaml(config)).values())
    if name == "prometheus":
        return {_port(_flag(command, "--web.listen-address") or ":9090")}
    if name == "grafana":
        return {int(service.get("environment", {}).get("GF_SERVER_HTTP_PORT", 3000))}
    return set()


def test_compose_file_follows_the_compose_spec() -> None:
    assert importlib.util.find_spec("check_jsonschema"), "check-jsonschema is missing: pip install -e '.[dev]'"
    result = subprocess.run(
        [PY, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        checked = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True)
        assert checked.returncode == 0, checked.stderr.decode(errors="replace")


def test_compose_mounts_and_builds_only_what_the_repo_has() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for mount in _mounts(service):
            if mount.source is None:
                assert mount.target and mount.target.startswith("/"), (name, mount)
                continue
            assert mount.source.exists(), f"{name} mounts {mount.source.relative_to(REPO)}, which is not in the repo"
            assert REPO in mount.source.parents, f"{name} mounts {mount.source} from outside the repo"
        named = {v.split(":")[0] for v in service.get("volumes", []) if isinstance(v, str) and not v.startswith(".")}
        assert named <= set(compose.get("volumes") or {}), f"{name}: undeclared named volumes {named}"
        if "build" in service:
            context = REPO / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name


_VERSION_TAG = re.compile(r"\d+\.\d+\.\d+")


def _pinned(image: str) -> bool:
    """A full version tag (or a digest): never `latest`, never a floating `3.11-slim`."""
    name, _, tag = image.rpartition(":")
    return "@sha256:" in image or ("/" not in tag and tag != "latest" and bool(_VERSION_TAG.search(tag)) and bool(name))


def test_compose_images_are_pinned() -> None:
    for name, service in _compose()["services"].items():
        image = service.get("image")
        if "build" in service:  # built here: any tag but latest
            assert image is None or (":" in image and not image.endswith(":latest")), (name, image)
        else:
            assert image and _pinned(image), f"{name}: image {image!r} is not pinned to a version"


def _url_target(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


def test_every_address_in_the_stack_is_a_service_port_that_listens() -> None:
    """Prometheus's targets, the gateway's OTLP endpoint, Grafana's datasource, the load script's
    gateway and every published port: each names a compose service and a port its config listens on."""
    services = _compose()["services"]
    listening = {name: _listening(name, service) for name, service in services.items()}
    datasources = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    addresses = {
        "the gateway's OTLP endpoint": services["gateway"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "the load script's gateway": services["load"]["environment"]["GATEWAY_URL"],
        "Grafana's datasource": datasources["datasources"][0]["url"],
    }
    addresses |= {f"scrape job {job}": target for job, targets in scrape_targets().items() for target in targets}
    for what, address in addresses.items():
        host, port = _url_target(address)
        host = "prometheus" if host == "localhost" and what == "scrape job prometheus" else host
        assert host in services, f"{what} ({address}) is not a compose service"
        assert port in listening[host], f"{what} ({address}): {host} listens on {sorted(listening[host])}"
    for name, service in services.items():
        for published in service.get("ports", []):
            container = int(str(published).rsplit(":", 1)[-1].split("/")[0])
            assert container in listening[name], f"{name} publishes {container}; it listens on {listening[name]}"


def test_both_paths_are_scraped_each_under_its_own_job() -> None:
    services = _compose()["services"]
    collector = _collector_ports(load_yaml(COLLECTOR))
    targets = scrape_targets()
    assert targets[DIRECT_JOB] == [f"gateway:{min(_listening('gateway', services['gateway']))}"]
    assert targets[OTLP_JOB] == [f"otel-collector:{collector['prometheus-exporter']}"]
    otlp = next(job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if job["job_name"] == OTLP_JOB)
    assert not otlp.get("honor_labels", False), "honor_labels would let the collector's job label replace ours"
    environment = services["gateway"]["environment"]
    assert environment["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert _url_target(environment["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otel-collector", collector["otlp-http"])


def test_every_file_a_service_is_told_to_read_is_mounted_from_the_repo() -> None:
    services = _compose()["services"]
    gateway, prometheus, grafana = services["gateway"], services["prometheus"], services["grafana"]
    expected = {
        ("gateway", _flag(gateway["command"], "--config")): GATEWAY_CONFIG,
        ("otel-collector", _flag(services["otel-collector"]["command"], "--config")): COLLECTOR,
        ("prometheus", _flag(prometheus["command"], "--config.file")): PROMETHEUS_CONFIG,
        ("load", services["load"]["command"][-1]): LOAD_SCRIPT,
    }
    for (name, path), repo_file in expected.items():
        assert path is not None and _in_container(services[name], path) == repo_file.resolve(), (name, path)
    # Prometheus finds the rules where its config says, relative to the config file in the container.
    config_path = PurePosixPath(_flag(prometheus["command"], "--config.file") or "")
    for pattern in load_yaml(PROMETHEUS_CONFIG)["rule_files"]:
        folder = _in_container(prometheus, str(config_path.parent / PurePosixPath(pattern).parent))
        assert folder is not None and sorted(folder.glob(PurePosixPath(pattern).name)) == RULE_FILES, pattern
    # Grafana: the provider reads the mounted dashboards, and the home dashboard is one of them.
    providers = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "dashboards.yml")["providers"]
    for provider in providers:
        folder = _in_container(grafana, provider["options"]["path"])
        assert folder is not None and list(folder.glob("*.json")), provider
    home = _in_container(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None and home.is_file(), home
    datasources = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    assert [d["uid"] for d in datasources["datasources"] if d["type"] == "prometheus"] == ["prometheus"]


def test_the_gateway_config_is_valid_and_the_compose_environment_turns_otlp_on() -> None:
    config = load_config(GATEWAY_CONFIG, env={})
    assert config.servers, "the stack's gateway serves no server"
    for server_id, server in config.servers.items():
        # The image's python runs the demo server: the one the package was installed into.
        assert getattr(server, "command", None) == "python", server_id
        assert importlib.util.find_spec(server.args[-1]), server_id  # type: ignore[union-attr]
    environment = {k: str(v) for k, v in _compose()["services"]["gateway"]["environment"].items()}
    otlp = telemetry_settings(config, environment).otlp
    assert otlp is not None and otlp.protocol == "http/protobuf" and otlp.interval_seconds == 10, otlp


# -- 2. otel-collector.yaml -----------------------------------------------------------------------


def test_collector_pipelines_use_only_defined_components() -> None:
    collector = load_yaml(COLLECTOR)
    service = collector["service"]
    for extension in service.get("extensions", []):
        assert extension in collector["extensions"], f"service.extensions: {extension} is not defined"
    assert {"metrics", "traces"} <= service["pipelines"].keys()
    for name, pipeline in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in (collector.get(kind) or {}), f"pipeline {name}: {kind[:-1]} {component} undefined"
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter" and processors[-1] == "batch", (
            f"{name}: memory_limiter first, batch last"
        )
    metrics = service["pipelines"]["metrics"]
    assert metrics["receivers"] == ["otlp"] and "prometheus" in metrics["exporters"]
    assert collector["exporters"]["prometheus"]["resource_to_telemetry_conversion"]["enabled"] is True
    assert "debug" in collector["exporters"]
    assert "# prometheusremotewrite:" in COLLECTOR.read_text(), "the remote-write alternative, commented out"


# -- 3. Dockerfile ------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _arguments(value: str) -> list[str]:
    """An instruction's arguments, in JSON (exec) form or shell form."""
    return list(json.loads(value)) if value.startswith("[") else shlex.split(value)


def _glob(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern: `*` and `?` stay within a path segment, `**/` spans any number of them."""
    regex = ""
    for token in re.split(r"(\*\*/|\*|\?)", pattern.strip("/")):
        regex += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(regex)


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last pattern matching the path or a folder above it wins."""
    ignored = False
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = _glob(pattern.removeprefix("!"))
        if any(glob.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _copied_files() -> list[str]:
    """Every repo file the Dockerfile's COPY instructions put into the image (after .dockerignore)."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    files = []
    for keyword, value in _instructions():
        if keyword == "COPY":
            for source in _arguments(value)[:-1]:
                assert not source.startswith("--"), f"COPY {value}: a build stage or flag this test does not follow"
                path = REPO / source
                assert path.exists(), f"COPY {source}: not in the repo"
                for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                    relative = file.relative_to(REPO).as_posix()
                    if not _ignored(relative, patterns):
                        files.append(relative)
                assert any(f == source or f.startswith(source + "/") for f in files), f"COPY {source}: .dockerignored"
    return files


def test_dockerfile_base_user_healthcheck_and_command() -> None:
    instructions = _instructions()
    [base] = [value for keyword, value in instructions if keyword == "FROM"]
    assert base.startswith("python:3.11") and "slim" in base and _pinned(base), base
    user = [value for keyword, value in instructions if keyword == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0"), user
    [healthcheck] = [value for keyword, value in instructions if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and not re.search(r"\b(curl|wget)\b", healthcheck), healthcheck
    entrypoint = [_arguments(value) for keyword, value in instructions if keyword == "ENTRYPOINT"][-1]
    command = entrypoint + [_arguments(value) for keyword, value in instructions if keyword == "CMD"][-1]
    assert command[:2] == ["mcp-gateway", "serve"], command
    assert _flag(command, "--host") == "0.0.0.0" and _flag(command, "--config") == "/etc/mcp-gateway/gateway.yaml"
    port = _flag(command, "--port")
    assert f"127.0.0.1:{port}/healthz" in healthcheck, "the healthcheck asks the port the gateway serves"
    assert [value for keyword, value in instructions if keyword == "EXPOSE"] == [port]
    compose = _compose()["services"]["gateway"]
    assert compose["command"] == command[1:], "compose runs the image's own command (with the mounted config)"


def test_dockerfile_installs_the_package_as_make_run_does(tmp_path: Path) -> None:
    """`make run` is `pip install` of the repo, then `mcp-gateway serve`: the image does the same,
    and a wheel built from exactly the files it copies has both packages and the command."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install .*-e '\.\[dev\]'", makefile), "make run no longer pip-installs the repo"
    assert re.search(r"bin/mcp-gateway serve\b", makefile), "make run no longer runs mcp-gateway serve"
    runs = " ".join(value for keyword, value in _instructions() if keyword == "RUN")
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs), f"the image does not pip install the repo: {runs}"

    source = tmp_path / "context"
    for relative in _copied_files():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, source / relative)
    result = subprocess.run(
        [PY, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path / "wheel"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    for module in ("gateway/cli.py", "gateway/demo_server.py", "telemetry/catalog.py"):
        assert module in names, f"the image's install lacks {module}"
    assert not [name for name in names if "__pycache__" in name or name.startswith("tests/")], names
    assert re.search(r"^mcp-gateway = gateway\.cli:main$", scripts, re.M), scripts


def test_the_image_healthcheck_command_tells_up_from_down(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory({"demo": demo_server()})
    [healthcheck] = [value for keyword, value in _instructions() if keyword == "HEALTHCHECK"]
    probe = _arguments(healthcheck.split("CMD", 1)[1].strip())
    assert probe[:2] == ["python", "-c"] and "127.0.0.1:8080" in probe[2], probe
    for port, healthy in ((gw.port, True), (free_port(), False)):
        code = probe[2].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        result = subprocess.run([PY, "-c", code], capture_output=True, timeout=30)
        assert (result.returncode == 0) is healthy, (port, result.stderr)
