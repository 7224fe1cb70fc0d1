"""Host, Origin and cross-site checks in front of every route but the health probes.

A browser can be made to send requests to the gateway by any page its user opens: a form post or a
`fetch` from another site (cross-site request forgery), or a page on a name that resolves to the
gateway's own address (DNS rebinding). So every route that reads or changes anything (the MCP
endpoints, `/servers`, the admin actions, `/metrics`) answers only an allowed `Host` and `Origin`,
and the operations routes take no form posts. `/healthz` and `/readyz` say nothing and are
probed by addresses no allow-list knows (a kubelet's), so they pass.
"""

from __future__ import annotations

import functools

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.events import Observer, Rejection
from gateway.responses import HttpError, send_http_error, send_json_error

_PROBES = frozenset({"/healthz", "/readyz"})
# What an HTML form can send without a CORS preflight (fetch's "simple" content types).
_FORM_TYPES = frozenset({b"application/x-www-form-urlencoded", b"multipart/form-data", b"text/plain"})


def origin_allowed(origin: bytes, allowed: list[str]) -> bool:
    """`origin` is an allowed origin, on any port of it; "*" allows every origin."""
    if "*" in allowed:
        return True
    value = origin.decode("latin-1").rstrip("/")
    for entry in allowed:
        entry = entry.rstrip("/")
        if value == entry or (value.startswith(entry + ":") and value[len(entry) + 1 :].isdigit()):
            return True
    return False


def host_allowed(host: bytes, allowed: list[str]) -> bool:
    """The name in a Host header (its port dropped; IPv6 in brackets) is one of `allowed`."""
    value = host.decode("latin-1").lower()
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 or value.startswith("[") else value
    if name.startswith("[") and "]" in value:
        name = value[: value.index("]") + 1]
    return name in allowed


class Guard:
    """ASGI middleware: refuses what a browser could be tricked into sending, before any route runs."""

    def __init__(
        self, app: ASGIApp, allowed_hosts: list[str] | None, allowed_origins: list[str], observer: Observer
    ) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self.observer = observer
        # Decided once per distinct header value: clients send the same ones on every request.
        self._host_ok = functools.lru_cache(maxsize=256)(lambda host: host_allowed(host, allowed_hosts or []))
        self._origin_ok = functools.lru_cache(maxsize=256)(lambda origin: origin_allowed(origin, allowed_origins))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in _PROBES:
            refusal = self.refusal(scope)
            if refusal is not None:
                self.observer.rejected(None, refusal.rejection or Rejection.CROSS_SITE)
                if scope["path"].endswith("/mcp"):
                    await send_http_error(send, refusal)  # MCP clients show a JSON-RPC error's message
                else:
                    await send_json_error(send, refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> HttpError | None:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        hosts = self.allowed_hosts
        if hosts is not None and not self._host_ok(headers.get(b"host", b"")):
            return HttpError(
                421, "Misdirected Request: Host header not allowed (DNS rebinding protection)", rejection=Rejection.HOST
            )
        origin = headers.get(b"origin")
        if origin is not None and not self._origin_ok(origin):
            return HttpError(403, f"origin {origin.decode('latin-1')!r} is not allowed", rejection=Rejection.ORIGIN)
        if scope["method"] in ("POST", "DELETE") and not scope["path"].endswith("/mcp"):
            content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if content_type in _FORM_TYPES:
                return HttpError(
                    415,
                    f"operations routes take no {content_type.decode('latin-1')} body: it is what a cross-site "
                    "form sends (send no body, or application/json)",
                    rejection=Rejection.CROSS_SITE,
                )
        return None
