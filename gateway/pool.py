"""Initialized upstream sessions, handed out per (server, caller identity) and reused.

A hit reuses a live session; a miss creates one (concurrent misses for one key share the
creation); a closed session is dropped on sight. stdio servers are one process that speaks one MCP
session, multiplexed by `upstream.base`, so every identity shares it: the key's identity is "".
This is the seam where TTLs, health checks and circuit breaking plug in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from gateway.config import StdioServer
from gateway.events import Observer, PoolEvent
from gateway.lifecycle import ServerRuntime
from gateway.upstream.base import UpstreamSession

log = logging.getLogger(__name__)

Key = tuple[str, str]


class SessionPool:
    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self._sessions: dict[Key, UpstreamSession] = {}
        self._creating: dict[Key, asyncio.Task[UpstreamSession]] = {}

    @staticmethod
    def key(runtime: ServerRuntime, identity: str) -> Key:
        return (runtime.id, "" if isinstance(runtime.config, StdioServer) else identity)

    async def acquire(self, runtime: ServerRuntime, identity: str) -> UpstreamSession:
        """An initialized session for this caller; pair every acquire with `release`."""
        key = self.key(runtime, identity)
        session = self._sessions.get(key)
        if session is not None and not session.closed:
            self.observer.pool_event(runtime.id, PoolEvent.HIT)
        else:
            if session is not None:
                self._forget(key, session, "upstream_closed")
            session = await self._create(runtime, key)
            self.observer.pool_event(runtime.id, PoolEvent.MISS)
        runtime.in_flight += 1
        return session

    async def _create(self, runtime: ServerRuntime, key: Key) -> UpstreamSession:
        task = self._creating.get(key)
        if task is None:
            task = asyncio.create_task(runtime.open_session(), name=f"session-{key[0]}")
            self._creating[key] = task
            task.add_done_callback(lambda _: self._creating.pop(key, None))
        session = await asyncio.shield(task)
        session.identity = key[1]
        self._sessions[key] = session
        return session

    def release(self, runtime: ServerRuntime, session: UpstreamSession) -> None:
        runtime.in_flight -= 1
        runtime.last_used = runtime.clock()
        if session.closed:
            key = self.key(runtime, "")
            for candidate, held in list(self._sessions.items()):
                if held is session:
                    key = candidate
                    self._forget(key, session, "upstream_closed")

    def _forget(self, key: Key, session: UpstreamSession, reason: str) -> None:
        if self._sessions.get(key) is session:
            del self._sessions[key]
            self.observer.pool_event(key[0], PoolEvent.EVICTED, reason)

    async def evict_server(self, server_id: str, reason: str) -> None:
        """Close and forget every pooled session of one server."""
        doomed = [(key, session) for key, session in self._sessions.items() if key[0] == server_id]
        for key, session in doomed:
            self._forget(key, session, reason)
        # A stdio session is its server's process: the runtime stops it, with the stop's own reason.
        closing = [session.close(reason) for _, session in doomed if session.transport != "stdio"]
        await asyncio.gather(*closing, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._creating.values()):
            task.cancel()
        servers = {key[0] for key in self._sessions}
        for server_id in servers:
            with contextlib.suppress(Exception):
                await self.evict_server(server_id, "shutdown")

    def occupancy(self) -> list[tuple[str, int, int]]:
        """(server id, sessions in use now, sessions pooled now) for every server with sessions."""
        counts: dict[str, list[int]] = {}
        for (server_id, _), session in list(self._sessions.items()):
            entry = counts.setdefault(server_id, [0, 0])
            entry[0] += 1 if session.in_flight else 0
            entry[1] += 1
        return [(server_id, active, size) for server_id, (active, size) in counts.items()]

    def all_sessions(self) -> list[UpstreamSession]:
        return list(self._sessions.values())

    def live_sessions(self, server_id: str, identity: str) -> list[UpstreamSession]:
        """Open sessions this caller may be using with one server (no hit or miss is counted)."""
        return [
            session
            for (sid, who), session in self._sessions.items()
            if sid == server_id and who in ("", identity) and not session.closed
        ]

    def describe(self, server_id: str) -> list[dict[str, Any]]:
        return [
            {"identity": key[1] or "*", "protocol_version": session.protocol_version, "in_flight": session.in_flight}
            for key, session in self._sessions.items()
            if key[0] == server_id
        ]
