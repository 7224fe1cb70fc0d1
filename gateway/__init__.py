"""mcp-gateway: one front door for many MCP servers, with the numbers to run them."""

from __future__ import annotations

__version__ = "0.1.0"
