"""Which MCP era an upstream server speaks, learned once per start.

`server/discover` goes first (over stdio, before anything else; over HTTP, as a 2026 POST). A discover
answer naming 2026-07-28 makes the server a 2026 one; anything else (servers of the 2025 revisions
answer a request before `initialize` with an error, or not at all) means the 2025 handshake. A server
that is gone fails its start with its own reason, not as an era.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from gateway import modern
from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.upstream.base import CLIENT_CAPABILITIES, CLIENT_INFO, UpstreamSession

log = logging.getLogger(__name__)

PROBE_TIMEOUT: Final = 5.0  # seconds a server may take to answer server/discover before it is taken for a 2025 one


async def connect(
    session: UpstreamSession, timeout: float, protocol: str = "auto", discovered: dict[str, Any] | None = None
) -> None:
    """Make `session` speak its server's era: adopt a discover answer, or complete the 2025 handshake.

    `protocol` ("auto", "2025" or "2026") is the server's configured era; `discovered` is what it
    answered the last probe of this start: it is used, not asked again.
    """
    if discovered is None and protocol != "2025":
        discovered = await probe(session, timeout)
    if discovered is not None:
        session.adopt(discovered)
    elif protocol == "2026":
        raise UpstreamUnavailable(
            f"server {session.server_id!r} did not answer server/discover with 2026-07-28 (configured protocol: 2026)",
            data={"server": session.server_id, "reason": "protocol"},
        )
    else:
        await session.initialize(timeout)


async def probe(session: UpstreamSession, timeout: float) -> dict[str, Any] | None:
    """The server's discover answer if it speaks 2026-07-28; None for a server of the 2025 revisions.

    A `-32022` naming 2026-07-28 among the versions the server supports is a 2026 server: asked once more.
    """
    request = modern.envelope_request(modern.DISCOVER, CLIENT_CAPABILITIES, CLIENT_INFO)
    for _ in range(2):
        try:
            response = await session.request(
                request, timeout=min(timeout, PROBE_TIMEOUT), headers=modern.request_headers(request)
            )
        except GatewayError as exc:
            if session.closed:
                raise  # it is gone (exited, unreachable): that is the start's failure, not an era
            log.debug("server %s: no answer to server/discover (%s): 2025", session.server_id, exc.message)
            return None
        result = response.get("result")
        if isinstance(result, dict) and modern.speaks_modern(result):
            return result
        if not modern.offers_modern(response.get("error")):
            return None
    return None
