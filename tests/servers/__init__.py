"""Standalone MCP servers used as gateway upstreams in tests (run as subprocesses)."""
