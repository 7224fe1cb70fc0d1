"""One `subscriptions/listen` stream to each server that speaks MCP 2026-07-28, kept open while it runs.

A 2026 server announces list changes only on a listen stream. The gateway opens one per server
(asking for every list) and re-announces what comes on it exactly as a 2025 server's notifications
are: to 2025 clients' GET streams and to 2026 clients' listen streams (`gateway.listen`). A stream
that ends or breaks is opened again, with a backoff, while the server runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from gateway.errors import GatewayError, MethodNotFound
from gateway.listen import ALL, untagged
from gateway.protocol import Message
from gateway.upstream.base import UpstreamSession

log = logging.getLogger(__name__)

LISTEN_SECONDS: Final = 24 * 3600.0  # a listen request is answered only when the stream ends


class UpstreamListener:
    """Keeps a server's listen stream open; its notifications go to `on_notification`."""

    def __init__(
        self,
        server_id: str,
        open_session: Callable[[], Awaitable[UpstreamSession]],
        on_notification: Callable[[UpstreamSession, Message], None],
    ) -> None:
        self.server_id = server_id
        self._open_session = open_session
        self._on_notification = on_notification
        self._session: UpstreamSession | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.server_id}-listen")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                session = self._session = await self._open_session()
                params = {"notifications": ALL}
                listen: Message = {"jsonrpc": "2.0", "id": "listen", "method": "subscriptions/listen", "params": params}
                await session.request(listen, timeout=LISTEN_SECONDS, downstream=self)
                failures = 0  # the server ended the stream itself: open it again
            except GatewayError as exc:
                failures += 1
                log.debug("server %s: its listen stream broke: %s", self.server_id, exc.message)
            await asyncio.sleep(min(2.0**failures, 30.0))

    # -- ClientChannel: what arrives on the listen stream ------------------------------------------

    def notify(self, message: Message) -> bool:
        found = untagged(message)
        if found is not None and self._session is not None:
            self._on_notification(self._session, found)
        return True

    async def request(self, message: Message) -> Message:
        raise MethodNotFound("a server of MCP 2026-07-28 sends no requests on a listen stream")
