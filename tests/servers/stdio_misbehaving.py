"""Hand-written stdio MCP server (no SDK) that misbehaves on request, for gateway robustness tests.

Run: ``python -m tests.servers.stdio_misbehaving``. Speaks newline-delimited JSON-RPC on stdin/stdout.
Tools: ``echo`` answers normally; ``garbage`` writes a non-JSON line to stdout, then answers normally;
``crash`` exits the process with code 3 without answering; ``hang`` never answers (other requests still do);
``env`` returns the process environment as JSON text; ``cancelled`` returns, as JSON text, the ids of the
``hang`` requests and of the ``notifications/cancelled`` received; ``deafen`` answers, then leaves every later
``ping`` unanswered (other requests still answer), as a server whose health checks fail.
``replay`` writes the raw ``lines`` it is given on stdout (``$ID`` in them becomes the request's id, as
JSON), then answers like echo unless ``answer`` is false; ``big`` answers with a text of ``size``
characters; ``flood`` sends ``count`` notifications/resources/updated, each padded to ``size`` bytes.
It writes one line to stderr at startup.
With ``MISBEHAVING_STUBBORN=1`` in its environment it ignores SIGTERM and outlives the end of stdin;
with ``MISBEHAVING_INIT_DELAY=S`` it answers initialize after S seconds (``inf``: never).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

SERVER_INFO = {"name": "stdio-misbehaving", "version": "1.0.0"}
DEFAULT_PROTOCOL_VERSION = "2025-11-25"
GARBAGE_LINE = "this is not json"
CRASH_EXIT_CODE = 3

METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
PARSE_ERROR = -32700

_TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
}
_NO_ARGS_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

TOOLS: list[dict[str, Any]] = [
    {"name": "echo", "description": "Return the given text unchanged.", "inputSchema": _TEXT_SCHEMA},
    {
        "name": "garbage",
        "description": "Write a non-JSON line to stdout, then answer like echo.",
        "inputSchema": _NO_ARGS_SCHEMA,
    },
    {
        "name": "crash",
        "description": f"Exit the process with code {CRASH_EXIT_CODE} without answering.",
        "inputSchema": _NO_ARGS_SCHEMA,
    },
    {"name": "hang", "description": "Never answer this request.", "inputSchema": _NO_ARGS_SCHEMA},
    {
        "name": "announce",
        "description": "Send notifications/tools/list_changed, then answer.",
        "inputSchema": _NO_ARGS_SCHEMA,
    },
    {
        "name": "mute",
        "description": "Close stdout and keep running without ever answering again.",
        "inputSchema": _NO_ARGS_SCHEMA,
    },
    {"name": "env", "description": "The process environment as JSON text.", "inputSchema": _NO_ARGS_SCHEMA},
    {
        "name": "cancelled",
        "description": "JSON text: ids of hang requests and of notifications/cancelled received.",
        "inputSchema": _NO_ARGS_SCHEMA,
    },
    {"name": "deafen", "description": "Answer, then never answer ping again.", "inputSchema": _NO_ARGS_SCHEMA},
    {
        "name": "replay",
        "description": "Write the given raw lines ($ID: this request's id), then answer unless answer is false.",
        "inputSchema": {"type": "object", "properties": {"lines": {"type": "array"}, "answer": {"type": "boolean"}}},
    },
    {
        "name": "big",
        "description": "Answer with a text of the given size.",
        "inputSchema": {"type": "object", "properties": {"size": {"type": "integer"}}},
    },
    {
        "name": "flood",
        "description": "Send count notifications/resources/updated of about size bytes each, then answer.",
        "inputSchema": {"type": "object", "properties": {"count": {"type": "integer"}, "size": {"type": "integer"}}},
    },
]

PAGE_SIZE = 3
HUNG: list[Any] = []  # ids of hang requests, in arrival order
CANCELLED: list[Any] = []  # requestId of each notifications/cancelled, in arrival order
DEAF = False  # set by the deafen tool: pings go unanswered from then on


def _write_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _send(message: dict[str, Any]) -> None:
    _write_line(json.dumps({"jsonrpc": "2.0", **message}, separators=(",", ":")))


def _result(request_id: Any, result: dict[str, Any]) -> None:
    _send({"id": request_id, "result": result})


def _error(request_id: Any, code: int, message: str) -> None:
    _send({"id": request_id, "error": {"code": code, "message": message}})


def _text_result(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def _echo(request_id: Any, arguments: dict[str, Any]) -> None:
    _result(request_id, _text_result(str(arguments.get("text", ""))))


def _garbage(request_id: Any, arguments: dict[str, Any]) -> None:
    _write_line(GARBAGE_LINE)
    _result(request_id, _text_result("garbage sent"))


def _crash(request_id: Any, arguments: dict[str, Any]) -> None:
    sys.stdout.flush()
    # What a dying process leaves on stderr (a traceback, say), its last line last.
    sys.stderr.write("".join(f"  frame {n}\n" for n in range(2000)) + f"last words of pid {os.getpid()}\n")
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


def _hang(request_id: Any, arguments: dict[str, Any]) -> None:
    HUNG.append(request_id)


def _announce(request_id: Any, arguments: dict[str, Any]) -> None:
    _send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    _result(request_id, _text_result("announced"))


def _mute(request_id: Any, arguments: dict[str, Any]) -> None:
    sys.stdout.flush()
    os.close(sys.stdout.fileno())
    time.sleep(600)


def _env(request_id: Any, arguments: dict[str, Any]) -> None:
    _result(request_id, _text_result(json.dumps(dict(os.environ), sort_keys=True)))


def _cancelled(request_id: Any, arguments: dict[str, Any]) -> None:
    _result(request_id, _text_result(json.dumps({"hung": HUNG, "cancelled": CANCELLED})))


def _deafen(request_id: Any, arguments: dict[str, Any]) -> None:
    global DEAF
    DEAF = True
    _result(request_id, _text_result("deaf to ping from now on"))


def _replay(request_id: Any, arguments: dict[str, Any]) -> None:
    for line in arguments.get("lines") or []:
        sys.stdout.write(str(line).replace("$ID", json.dumps(request_id)) + "\n")
    sys.stdout.flush()
    if arguments.get("answer", True):
        _result(request_id, _text_result("replayed"))


def _big(request_id: Any, arguments: dict[str, Any]) -> None:
    _result(request_id, _text_result("x" * int(arguments.get("size", 0))))


def _flood(request_id: Any, arguments: dict[str, Any]) -> None:
    padding = "p" * int(arguments.get("size", 0))
    for n in range(int(arguments.get("count", 0))):
        params = {"uri": f"flood://{n}", "padding": padding}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": params}))
        sys.stdout.write("\n")
    sys.stdout.flush()
    _result(request_id, _text_result("flooded"))


_TOOLS = {
    "echo": _echo,
    "garbage": _garbage,
    "crash": _crash,
    "hang": _hang,
    "announce": _announce,
    "mute": _mute,
    "env": _env,
    "cancelled": _cancelled,
    "deafen": _deafen,
    "replay": _replay,
    "big": _big,
    "flood": _flood,
}


def _call_tool(request_id: Any, params: dict[str, Any]) -> None:
    name = params.get("name")
    tool = _TOOLS.get(name) if isinstance(name, str) else None
    if tool is None:
        _error(request_id, INVALID_PARAMS, f"Unknown tool: {name}")
        return
    tool(request_id, params.get("arguments") or {})


def _handle(message: dict[str, Any]) -> None:
    method = message.get("method")
    if not isinstance(method, str):
        return  # a response or something unrecognisable: this server never sends requests, so ignore it
    if "id" not in message:
        if method == "notifications/cancelled":
            CANCELLED.append((message.get("params") or {}).get("requestId"))
        return  # notifications need no answer
    request_id = message["id"]
    params = message.get("params") or {}
    if method == "initialize":
        delay = float(os.environ.get("MISBEHAVING_INIT_DELAY", "0"))
        if delay == float("inf"):
            return  # a server that never comes up
        time.sleep(delay)
        _result(
            request_id,
            {
                "protocolVersion": params.get("protocolVersion", DEFAULT_PROTOCOL_VERSION),
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": SERVER_INFO,
            },
        )
    elif method == "ping":
        if not DEAF:
            _result(request_id, {})
    elif method == "tools/list":
        # Pages of PAGE_SIZE tools, so that clients (the gateway) must follow nextCursor.
        start = int(params.get("cursor") or 0)
        page: dict[str, Any] = {"tools": TOOLS[start : start + PAGE_SIZE]}
        if start + PAGE_SIZE < len(TOOLS):
            page["nextCursor"] = str(start + PAGE_SIZE)
        _result(request_id, page)
    elif method == "tools/call":
        _call_tool(request_id, params)
    else:
        _error(request_id, METHOD_NOT_FOUND, f"Method not found: {method}")


def main() -> None:
    stubborn = os.environ.get("MISBEHAVING_STUBBORN") == "1"
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"stdio-misbehaving started (pid {os.getpid()})", file=sys.stderr, flush=True)
    while line := sys.stdin.readline():
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            _error(None, PARSE_ERROR, "Parse error")
            continue
        if isinstance(message, dict):
            _handle(message)
        elif isinstance(message, list):  # JSON-RPC batch (pre-2025-06-18 clients)
            for item in message:
                if isinstance(item, dict):
                    _handle(item)
    while stubborn:  # only SIGKILL ends it
        signal.pause()


if __name__ == "__main__":
    main()
