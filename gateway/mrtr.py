"""Multi round-trip requests (MCP 2026-07-28): a server that needs input answers `input_required`.

Such an answer lists what the server needs (`inputRequests`: elicitation, sampling, roots) and may
carry a `requestState`; the client answers and sends the same request again with `inputResponses`
and that state. The gateway carries this between eras:

- a 2026 client and a 2026 server: passed through, the server's `requestState` sealed by the gateway
  (HMAC over the state, the caller, the server, the method and an expiry), so a state issued to one
  caller cannot be replayed by another, altered, or used after it expired (the server sees one gateway
  credential for every caller and could not tell them apart);
- a 2025 client and a 2026 server: each input request becomes a request to the client on the call's
  stream (only for capabilities the client declared), and the call is sent again with the answers,
  for at most `MAX_ROUNDS` rounds;
- a 2026 client and a 2025 server: see `gateway.holds` (the call is held, its state sealed here too).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from gateway.errors import GatewayError, InvalidParams

MAX_ROUNDS: Final = 8  # input-required rounds one call may take through the gateway
STATE_TTL: Final = 600.0  # seconds a sealed requestState stays valid
_PREFIX: Final = "mcpgw1."


class StateSealer:
    """Seals a server's `requestState` to the caller, server and method it was issued for."""

    def __init__(
        self, key: bytes | None = None, ttl: float = STATE_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key or secrets.token_bytes(32)  # one key per gateway: a state is opened where it was sealed
        self.ttl = ttl
        self.clock = clock

    def seal(self, state: str, identity: str, server_id: str, method: str) -> str:
        body = orjson.dumps([state, _digest(identity), server_id, method, round(self.clock() + self.ttl)])
        encoded = base64.urlsafe_b64encode(body).decode()
        return f"{_PREFIX}{encoded}.{self._mac(encoded)}"

    def open(self, token: Any, identity: str, server_id: str, method: str) -> str:
        """The server's state inside `token`; raises -32602 saying why it cannot be used."""
        if not isinstance(token, str) or not token.startswith(_PREFIX) or token.count(".") != 2:
            raise _refused("it was not issued by this gateway", "foreign")
        encoded, mac = token[len(_PREFIX) :].split(".")
        if not hmac.compare_digest(mac, self._mac(encoded)):
            raise _refused("it fails its integrity check (altered, or sealed by another gateway replica)", "tampered")
        state, caller, server, bound_method, expiry = orjson.loads(base64.urlsafe_b64decode(encoded))
        if caller != _digest(identity) or server != server_id or bound_method != method:
            raise _refused("it was issued for another caller, server or method", "foreign")
        if self.clock() > expiry:
            raise _refused(f"it expired (valid {self.ttl:g}s); send the request again without it", "expired")
        return str(state)

    def peek(self, token: Any) -> str | None:
        """The state inside a token this gateway sealed, its binding unchecked; None for any other token."""
        if not isinstance(token, str) or not token.startswith(_PREFIX) or token.count(".") != 2:
            return None
        encoded, mac = token[len(_PREFIX) :].split(".")
        if not hmac.compare_digest(mac, self._mac(encoded)):
            return None
        return str(orjson.loads(base64.urlsafe_b64decode(encoded))[0])

    def _mac(self, encoded: str) -> str:
        return hmac.new(self._key, encoded.encode(), hashlib.sha256).hexdigest()


def _digest(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def _refused(why: str, reason: str) -> GatewayError:
    return InvalidParams(f"Invalid params: requestState cannot be used: {why}", data={"reason": f"state_{reason}"})


def is_input_required(response: dict[str, Any]) -> bool:
    result = response.get("result")
    return isinstance(result, dict) and result.get("resultType") == "input_required"
