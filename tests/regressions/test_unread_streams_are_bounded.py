"""A client stream nobody reads holds at most `limits.max_stream_buffer_bytes`, then is closed (F10).

A GET stream that was never read buffered without limit: 100,000 upstream notifications of ~1 KB
took the gateway from 85 to 242 MiB, and it stayed there. The stream now queues a bounded number of
bytes; past that it is closed (the client reconnects and lists again), and the cut is counted.
"""

from __future__ import annotations

import socket
from typing import Any

import psutil

from tests.support.mcp import raw_initialize, rpc
from tests.support.metrics import scrape
from tests.support.processes import Gateway, misbehaving_server

BUFFER = 64 * 1024
FLOOD = {"count": 40_000, "size": 1000}  # 40 MB of notifications: far past every socket buffer


def _open_unread_stream(gw: Gateway, session_id: str) -> socket.socket:
    """A GET stream whose reader never reads a byte after the request."""
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = (
        f"GET /servers/bad/mcp HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nAccept: text/event-stream\r\n"
        f"Mcp-Session-Id: {session_id}\r\nMCP-Protocol-Version: 2025-11-25\r\n\r\n"
    )
    sock.sendall(request.encode())
    return sock


def test_an_unread_get_stream_is_closed_not_buffered(gateway_factory: Any) -> None:
    gw = gateway_factory({"bad": misbehaving_server(lazy=False)}, {"limits": {"max_stream_buffer_bytes": BUFFER}})
    gateway = psutil.Process(gw.proc.pid)
    path = "/servers/bad/mcp"
    session_id = raw_initialize(gw, path)
    sock = _open_unread_stream(gw, session_id)
    try:
        caller = raw_initialize(gw, path)
        rpc(gw, path, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}, caller)
        before = gateway.memory_info().rss
        flood = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "flood", "arguments": FLOOD}}
        response = rpc(gw, path, flood, caller)
        assert response.status_code == 200 and response.json()["result"]["content"][0]["text"] == "flooded"
        grown = gateway.memory_info().rss - before
        assert grown < 25 * 1024 * 1024, f"the gateway grew by {grown / 2**20:.0f} MiB for an unread stream"
        metrics = scrape(gw)
        assert metrics.value("mcp_gateway_rejections_total", server_id="bad", reason="stream_overflow") == 1
        assert "did not read its GET stream: closed it" in gw.log()
    finally:
        sock.close()
