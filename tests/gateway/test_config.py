"""Config validation: `parse_config`/`load_config` directly, and the CLI as the operator runs it.

Every problem must come back as one `ConfigError` naming the file, the key path and what is wrong;
the CLI turns it into a non-zero exit with that message and no traceback.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import loop_factory
from gateway.config import ConfigError, HttpServer, StdioServer, load_config, parse_config
from tests.support.paths import PY, REPO
from tests.support.processes import demo_server, free_port


def _error(raw: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env=env or {})
    return str(caught.value)


# -- parse_config ------------------------------------------------------------------------------------


def test_mcp_servers_layout_with_command_and_url_entries() -> None:
    config = parse_config(
        {
            "mcpServers": {
                "files": {"command": "npx", "args": ["-y", "server-files"], "env": {"ROOT": "/tmp"}, "type": "stdio"},
                "remote": {"url": "https://example.com/mcp", "headers": {"X-Key": "k"}, "type": "http"},
                "off": {"command": "nothing", "disabled": True},
            },
            "gateway": {"port": 9000},
        },
        env={},
    )
    assert list(config.servers) == ["files", "remote"]
    files, remote = config.servers["files"], config.servers["remote"]
    assert isinstance(files, StdioServer)
    assert (files.command, files.args, files.env) == ("npx", ["-y", "server-files"], {"ROOT": "/tmp"})
    assert isinstance(remote, HttpServer)
    assert (remote.url, remote.headers) == ("https://example.com/mcp", {"X-Key": "k"})
    assert config.gateway.port == 9000


def test_gateway_layout_and_defaults() -> None:
    config = parse_config({"servers": {"demo": {"command": "python"}, "web": {"url": "http://127.0.0.1:1/mcp"}}})
    assert config.servers["demo"].transport == "stdio"
    assert config.servers["web"].transport == "streamable-http"
    assert config.gateway.host == "127.0.0.1"
    assert config.gateway.auth.tokens == []
    assert parse_config(None).servers == {}


def test_variables_expand_from_the_environment() -> None:
    config = parse_config(
        {
            "gateway": {"auth": {"tokens": ["${TOKEN}"]}},
            "servers": {"web": {"url": "https://${HOST}/mcp", "headers": {"Authorization": "Bearer ${KEY}"}}},
        },
        env={"TOKEN": "t0ken", "HOST": "api.example.com", "KEY": "k3y"},
    )
    web = config.servers["web"]
    assert isinstance(web, HttpServer)
    assert web.url == "https://api.example.com/mcp"
    assert web.headers == {"Authorization": "Bearer k3y"}
    assert config.gateway.auth.tokens == ["t0ken"]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"servers": {"a": {"command": "x", "env": {"T": "${NOPE}"}}}}, "servers.a.env.T: environment variable NOPE"),
        (
            {"mcpServers": {"a": {"command": "x", "args": ["${NOPE}"]}}},
            "mcpServers.a.args[0]: environment variable NOPE",
        ),
        ({"gateway": {"auth": {"tokens": ["${EMPTY}"]}}}, "gateway.auth.tokens: tokens must not be empty strings"),
    ],
)
def test_missing_or_empty_variable(raw: Any, says: str) -> None:
    assert says in _error(raw, env={"EMPTY": ""})


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"servers": {"Bad_Id": {"command": "x"}}}, "server id 'Bad_Id' must match"),
        ({"mcpServers": {"a b": {"command": "x"}}}, "mcpServers: server id 'a b' must match"),
        ({"servers": {"a": {"comand": "x"}}}, "servers.a.comand: unknown key"),
        ({"mcpServers": {"a": {"command": "x", "colour": "red"}}}, "mcpServers.a.colour: unknown key"),
        ({"gatway": {}}, "gatway: unknown key"),
        ({"gateway": {"limits": {"max_body": 1}}}, "gateway.limits.max_body: unknown key"),
        ({"gateway": {"port": "eighty"}}, "gateway.port: Input should be a valid integer"),
        ({"gateway": {"port": 70000}}, "gateway.port: Input should be less than or equal to 65535"),
        (
            {"gateway": {"limits": {"max_body_bytes": 0}}},
            "gateway.limits.max_body_bytes: Input should be greater than 0",
        ),
        ({"servers": {"a": {"command": "x", "args": "--flag"}}}, "servers.a.args: Input should be a valid list"),
        ({"servers": {"a": "python server.py"}}, "servers.a: must be a mapping with a 'command' (stdio) or a 'url'"),
        ({"servers": ["a"]}, "servers: Input should be a valid dictionary"),
        ({"mcpServers": ["a"]}, "mcpServers: must be a mapping"),
        ({"servers": {"a": {"url": "ftp://example.com"}}}, "servers.a.url: must be an http:// or https:// URL"),
        ({"servers": {"a": {"url": "example.com/mcp"}}}, "servers.a.url: must be an http:// or https:// URL"),
        ({"servers": {"a": {"url": "http://x", "command": "y"}}}, "servers.a.command: unknown key"),
        ({"servers": {"a": {"transport": "streamable-http", "command": "y"}}}, "servers.a.url: Field required"),
        ({"servers": {}, "mcpServers": {"a": {"command": "y"}}}, "use either servers or mcpServers, not both"),
        ([{"command": "x"}], "the top level must be a mapping"),
    ],
)
def test_invalid_config_names_key_path_and_problem(raw: Any, says: str) -> None:
    assert says in _error(raw)


# -- load_config -------------------------------------------------------------------------------------

GOOD = {"gateway": {"port": 8123}, "servers": {"demo": {"command": "python", "args": ["-m", "gateway.demo_server"]}}}


def test_yaml_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(GOOD))
    (tmp_path / "gw.json").write_text(json.dumps({"mcpServers": GOOD["servers"]}))
    from_yaml = load_config(tmp_path / "gw.yaml")
    from_json = load_config(tmp_path / "gw.json")
    assert from_yaml.gateway.port == 8123
    assert from_yaml.servers == from_json.servers
    assert isinstance(from_json.servers["demo"], StdioServer)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers:\n  demo:\n    command: python\n    restart: {max_attempts: many}\n")
    message = _load_error(bad)
    assert message.startswith(f"{bad}: ")
    assert "servers.demo.restart.max_attempts: Input should be a valid integer" in message


def test_missing_variable_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("gateway:\n  auth:\n    tokens: ['${GW_TEST_TOKEN}']\n")
    assert load_config(path, env={"GW_TEST_TOKEN": "s3cret"}).gateway.auth.tokens == ["s3cret"]
    assert _load_error(path, env={}) == f"{path}: gateway.auth.tokens[0]: environment variable GW_TEST_TOKEN is not set"


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("broken.yaml", "servers: [unclosed\n", "not valid YAML"),
        ("tabs.yaml", "servers:\n\tdemo: {}\n", "not valid YAML"),
        ("broken.json", '{"servers": ', "not valid JSON"),
        ("list.yaml", "- a\n- b\n", "the top level must be a mapping"),
    ],
)
def test_unparseable_files(tmp_path: Path, name: str, text: str, says: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    message = _load_error(path)
    assert message.startswith(f"{path}: ") and says in message


def test_unreadable_files(tmp_path: Path) -> None:
    assert (
        _load_error(tmp_path / "missing.yaml") == f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"
    )
    assert _load_error(tmp_path) == f"{tmp_path}: cannot read: Is a directory"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert _load_error(binary) == f"{binary}: cannot read: not UTF-8 text (invalid start byte at byte 0)"


def _load_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    return str(caught.value)


# -- the CLI -----------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "gateway", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    done = _cli("check-config", str(path))
    assert done.returncode == 0, done.stderr
    assert f"{path}: OK (1 servers: demo)" in done.stdout


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("servers:\n  demo:\n    command: python\n    timeout_s: 3\n", "servers.demo.timeout_s: unknown key"),
        ("servers: [unclosed\n", "not valid YAML"),
        (
            "servers:\n  web:\n    url: ${GW_TEST_UNSET_VAR}\n",
            "servers.web.url: environment variable GW_TEST_UNSET_VAR",
        ),
    ],
)
def test_a_bad_file_exits_non_zero_without_a_traceback(tmp_path: Path, command: str, text: str, says: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    done = _cli(command, str(path)) if command == "check-config" else _cli("serve", "--config", str(path))
    assert done.returncode != 0
    assert f"{path}: " in done.stderr and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_missing_file_exits_non_zero_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    for done in (_cli("check-config", str(path)), _cli("serve", "--config", str(path))):
        assert done.returncode != 0
        assert f"{path}: cannot read: No such file or directory" in done.stderr
        assert "Traceback" not in done.stderr


# -- one process per replica: the multi-worker trap ------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "says"),
    [("4", "--workers 4: mcp-gateway runs as one process per replica"), ("0", "--workers 0: must be 1")],
)
def test_serve_refuses_worker_processes_and_points_to_replicas(workers: str, says: str) -> None:
    done = _cli("serve", "--workers", workers, "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert says in done.stderr, done.stderr
    if workers == "4":
        assert "Run 4 replicas instead" in done.stderr and "docs/scaling.md" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_web_concurrency_is_reported_as_ignored_and_the_gateway_runs_as_one_process(gateway_factory: Any) -> None:
    gw = gateway_factory({"demo": demo_server(lazy=False)}, env={"WEB_CONCURRENCY": "4"})
    assert "WEB_CONCURRENCY=4 is ignored: mcp-gateway runs one process per replica" in gw.log()
    # One gateway process: its only children are the demo server's.
    assert all("gateway.demo_server" in " ".join(child.cmdline()) for child in gw.children()), gw.children()


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop

    assert loop_factory("auto") is uvloop.new_event_loop  # installed with uvicorn[standard]
    assert loop_factory("asyncio") is asyncio.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where it is not installed
    assert loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(ConfigError, match=r"^--loop uvloop: uvloop is not installed$"):
        loop_factory("uvloop")
