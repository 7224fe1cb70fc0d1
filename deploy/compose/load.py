"""Scripted load on the compose stack's demo servers, so every dashboard panel has data.

Standard library only: it runs in the plain python image (`docker compose --profile load up`) and
in the test suite against a local gateway. Each round opens an MCP session, alternately on the
aggregated endpoint (`/mcp`, tools named `{server}__{tool}`) and on a server's own endpoint, makes a
few tool calls (echo, add, a short sleep; now and then one that fails and one that does not
exist), and ends the session with DELETE. The `demo-idle` server is only called in the first 30 s
of every 3 minutes, so it idles out and restarts (starts and stops by reason on the dashboard).

Environment: GATEWAY_URL (default http://gateway:8080), LOAD_ROUNDS (default 100; 0 = until
stopped), LOAD_PAUSE (seconds between rounds, default 0.5), LOAD_SERVERS (default "demo,demo-idle";
the first is always called, the others in their window), GATEWAY_TOKEN (a bearer token, if the
gateway asks for one). The last line printed is a JSON summary of what was sent.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

PROTOCOL = "2025-11-25"
IDLE_WINDOW = (180, 30)  # call the idle-stopping servers during the first 30 s of every 180 s


class Client:
    """One MCP session over streamable HTTP: JSON or SSE answers, Mcp-Session-Id, DELETE at the end."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.ids = itertools.count(1)

    def _send(self, method: str, body: bytes | None = None) -> tuple[Any, str]:
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.headers, response.read().decode()
        except urllib.error.HTTPError as exc:  # JSON-RPC errors can come with 4xx/5xx statuses
            return exc.headers, exc.read().decode(errors="replace")

    def rpc(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A request; its JSON-RPC answer (result or error), read from JSON or from the SSE stream."""
        message_id = next(self.ids)
        body = json.dumps({"jsonrpc": "2.0", "id": message_id, "method": method, "params": params or {}})
        headers, text = self._send("POST", body.encode())
        if "Mcp-Session-Id" in headers and "Mcp-Session-Id" not in self.headers:
            self.headers["Mcp-Session-Id"] = headers["Mcp-Session-Id"]
            self.headers["MCP-Protocol-Version"] = PROTOCOL
        for message in _messages(headers.get("Content-Type", ""), text):
            if isinstance(message, dict) and message.get("id") == message_id:
                return message
        return {"error": {"message": f"no answer to {method}: {text[:200]!r}"}}

    def notify(self, method: str) -> None:
        self._send("POST", json.dumps({"jsonrpc": "2.0", "method": method}).encode())

    def __enter__(self) -> Client:
        answer = self.rpc(
            "initialize",
            {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "load", "version": "1"}},
        )
        if "result" not in answer:
            raise ConnectionError(f"initialize failed: {answer}")
        self.notify("notifications/initialized")
        return self

    def __exit__(self, *exc: object) -> None:
        if "Mcp-Session-Id" in self.headers:
            self._send("DELETE")


def _messages(content_type: str, text: str) -> list[Any]:
    if content_type.startswith("text/event-stream"):
        data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        return [json.loads(item) for item in data if item]
    return [json.loads(text)] if text.strip() else []


def _wait_ready(base: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"load: {base} not ready after {timeout:g}s")
        time.sleep(1)


def _round(base: str, token: str | None, server: str, aggregated: bool, number: int, sent: Counter[str]) -> None:
    url = f"{base}/mcp" if aggregated else f"{base}/servers/{server}/mcp"
    prefix = f"{server}__" if aggregated else ""
    calls: list[tuple[str, dict[str, Any]]] = [
        ("echo", {"text": f"round {number}"}),
        ("add", {"a": number, "b": 1}),
        ("sleep", {"seconds": 0.05 * (number % 5)}),
    ]
    if number % 10 == 0:
        calls.append(("fail", {"message": "scripted failure"}))  # an isError result: error_type tool_error
    if number % 25 == 0:
        calls.append(("no-such-tool", {}))  # a tool the server never advertised
    with Client(url, token) as client:
        for tool, arguments in calls:
            answer = client.rpc("tools/call", {"name": prefix + tool, "arguments": arguments})
            failed = "error" in answer or bool((answer.get("result") or {}).get("isError"))
            sent[f"{server} {tool} {'error' if failed else 'ok'}"] += 1


def main() -> None:
    base = os.environ.get("GATEWAY_URL", "http://gateway:8080").rstrip("/")
    rounds = int(os.environ.get("LOAD_ROUNDS", "100"))
    pause = float(os.environ.get("LOAD_PAUSE", "0.5"))
    servers = [s for s in os.environ.get("LOAD_SERVERS", "demo,demo-idle").split(",") if s]
    token = os.environ.get("GATEWAY_TOKEN") or None
    _wait_ready(base)
    sent: Counter[str] = Counter()
    started = time.monotonic()
    for number in itertools.count(1) if rounds == 0 else range(1, rounds + 1):
        in_window = time.time() % IDLE_WINDOW[0] < IDLE_WINDOW[1]
        for server in servers[:1] + (servers[1:] if in_window else []):
            try:
                _round(base, token, server, number % 2 == 0, number, sent)
            except (OSError, ConnectionError) as exc:  # the gateway restarting: keep going
                sent[f"{server} session failed"] += 1
                print(f"load: round {number} on {server}: {exc}", file=sys.stderr)
        if number % 100 == 0:
            print(f"load: {number} rounds in {time.monotonic() - started:.0f}s", flush=True)
        time.sleep(pause)
    print(json.dumps({"rounds": rounds, "sent": dict(sorted(sent.items()))}), flush=True)


if __name__ == "__main__":
    main()
