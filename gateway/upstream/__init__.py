"""Upstream MCP sessions: the gateway as a client of each configured server."""
