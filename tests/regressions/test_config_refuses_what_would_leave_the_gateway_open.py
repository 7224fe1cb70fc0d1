"""A config that would leave the gateway open by accident is refused, naming the key (F14, F15).

`metrics_token: ""` (an empty `${VAR}`, say) passed `check-config` and left `/metrics` open, while
an empty entry in `tokens` was refused. `host: 0.0.0.0` with no tokens started silently, open to
the network. Now the first is a config error and the second refuses to start unless the config
opts in with `gateway.auth.allow_unauthenticated: true`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.paths import PY, REPO
from tests.support.processes import demo_server, free_port


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "gateway", *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)


def _config(tmp_path: Path, gateway: dict[str, object]) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway": gateway, "servers": {"demo": demo_server()}}))
    return str(path)


@pytest.mark.parametrize("token", ["", "  ", "${EMPTY}"])
def test_an_empty_metrics_token_is_a_config_error(tmp_path: Path, token: str) -> None:
    path = _config(tmp_path, {"auth": {"metrics_token": token}})
    result = _run("check-config", path, env={"EMPTY": "", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result
    assert "gateway.auth.metrics_token: must not be an empty string" in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_network_bind_without_tokens_refuses_to_start(tmp_path: Path, host: str) -> None:
    path = _config(tmp_path, {"host": host, "port": free_port()})
    checked = _run("check-config", path)
    assert checked.returncode == 2 and "no gateway.auth.tokens are set" in checked.stderr, checked
    served = _run("serve", "--config", path)  # exits before it binds anything
    assert served.returncode == 2, served
    assert "refusing to start" in served.stderr and "allow_unauthenticated: true" in served.stderr


def test_the_command_line_host_is_checked_too(tmp_path: Path) -> None:
    path = _config(tmp_path, {"port": free_port()})  # loopback in the file
    served = _run("serve", "--config", path, "--host", "0.0.0.0")
    assert served.returncode == 2 and "refusing to start" in served.stderr, served


@pytest.mark.parametrize(
    "gateway",
    [
        {"host": "0.0.0.0", "auth": {"tokens": ["t"]}},
        {"host": "0.0.0.0", "auth": {"allow_unauthenticated": True}},
        {"host": "127.0.0.2"},
        {"host": "localhost"},
    ],
)
def test_tokens_an_explicit_opt_in_or_loopback_may_start(tmp_path: Path, gateway: dict[str, object]) -> None:
    result = _run("check-config", _config(tmp_path, gateway))
    assert result.returncode == 0, result
