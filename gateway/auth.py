"""Bearer tokens: who a caller is, and whether it may call at all.

Tokens are compared in constant time, as SHA-256 digests; a caller's identity is a prefix of its
token's digest (never the token), or `anonymous` when no tokens are configured.
"""

from __future__ import annotations

import hashlib
import hmac

from gateway.events import Rejection
from gateway.responses import HttpError


class Auth:
    """Bearer tokens, compared in constant time; the caller's identity is a hash of its token."""

    def __init__(self, tokens: list[str]) -> None:
        self._digests = [hashlib.sha256(token.encode()).digest() for token in tokens]

    def identity(self, headers: dict[bytes, bytes]) -> str:
        """The caller's identity; raises 401 when tokens are configured and none of them was sent."""
        value = headers.get(b"authorization", b"")
        token = value[7:].strip() if value[:7].lower() == b"bearer " else b""
        digest = hashlib.sha256(token).digest() if token else b""
        if self._digests and not any(hmac.compare_digest(digest, known) for known in self._digests):
            raise HttpError(
                401,
                "a valid bearer token is required" if token else "missing bearer token",
                headers=[(b"www-authenticate", b'Bearer realm="mcp-gateway"')],
                rejection=Rejection.UNAUTHORIZED,
            )
        return digest.hex()[:16] if token else "anonymous"
