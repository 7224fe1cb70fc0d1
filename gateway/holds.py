"""Held calls: a server of the 2025 revisions asks a 2026 client something in the middle of a call.

In MCP 2026-07-28 a server cannot send the client a request; it answers `input_required` and the
client sends the call again with the answers. A 2025 server instead sends `elicitation/create`,
`sampling/createMessage` or `roots/list` while the call runs. The gateway bridges the two: the call
is held (its upstream request stays open), the client gets `input_required` with the question and a
`requestState` the gateway sealed (`gateway.mrtr`), and the client's retry carries the answers to the
waiting server, which then finishes the call or asks again.

Held calls are bounded: at most `max_held` at once (past that the server is told the client cannot be
asked), each for `hold_seconds` (then the upstream request is cancelled). A retry whose hold is gone
(it expired, or another replica holds it) gets `-32602` saying so.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.errors import InvalidParams, MethodNotFound
from gateway.mrtr import StateSealer
from gateway.protocol import Message

_PREFIX: Final = "hold:"
# Which client capability a server-to-client request needs (2025 and 2026 name them alike).
_NEEDS: Final = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


class Asking:
    """What one call's server has asked the client and waits for; shared by every round of the call."""

    def __init__(self, capabilities: dict[str, Any]) -> None:
        self.capabilities = capabilities  # declared by the request that started the call
        self.waiter: asyncio.Future[None] | None = None  # the retry waiting for the call's answer or a question
        self._questions: dict[str, tuple[Message, asyncio.Future[Message]]] = {}
        self._keys = itertools.count(1)

    async def ask(self, message: Message) -> Message:
        """A server request: answered by the client's next retry (the caller bounds the wait)."""
        method = str(message.get("method"))
        needed = _NEEDS.get(method)
        if needed is None or needed not in self.capabilities:
            raise MethodNotFound(
                f"the client did not declare the {needed or method!r} capability on this request",
                data={"method": method},
            )
        key = f"q{next(self._keys)}"
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._questions[key] = (message, future)
        if self.waiter is not None:
            _wake(self.waiter)
        try:
            return await future
        finally:
            self._questions.pop(key, None)

    def open_questions(self) -> dict[str, dict[str, Any]]:
        """The questions waiting for an answer, as `inputRequests`."""
        return {
            key: {"method": message["method"], "params": message.get("params") or {}}
            for key, (message, future) in self._questions.items()
            if not future.done()
        }

    def answer(self, responses: Any) -> None:
        """The client's `inputResponses`; a question left unanswered is asked again."""
        for key, (message, future) in list(self._questions.items()):
            if isinstance(responses, dict) and isinstance(responses.get(key), dict) and not future.done():
                future.set_result({"jsonrpc": "2.0", "id": message.get("id"), "result": responses[key]})


@dataclass(eq=False)
class _Held:
    call: asyncio.Task[Message]
    asking: Asking
    where: str
    expiry: asyncio.TimerHandle | None = field(default=None)


class Holds:
    """The calls held for their client's answers, keyed by a random id sealed into the `requestState`."""

    def __init__(
        self, sealer: StateSealer, max_held: int, hold_seconds: float, on_change: Callable[[str, bool], None]
    ) -> None:
        self.sealer = sealer
        self.max_held = max_held
        self.hold_seconds = hold_seconds
        self._on_change = on_change  # (where, held): a call began or ended waiting
        self._held: dict[str, _Held] = {}

    async def answer(
        self, call: asyncio.Task[Message], asking: Asking, identity: str, where: str, request: Message
    ) -> tuple[Message, bool]:
        """The call's response, or `input_required` (the call held) if its server asks something first.

        Returns (response, held).
        """
        if not call.done() and not asking.open_questions():
            waiter = asking.waiter = asyncio.get_running_loop().create_future()
            call.add_done_callback(lambda _: _wake(waiter))
            try:
                await waiter
            except asyncio.CancelledError:
                call.cancel()  # the client went away before anything was held
                raise
            finally:
                asking.waiter = None
        if call.done():
            return call.result(), False
        hold_id = secrets.token_urlsafe(12)
        held = self._held[hold_id] = _Held(call, asking, where)
        self._on_change(where, True)
        held.expiry = asyncio.get_running_loop().call_later(self.hold_seconds, self._expire, hold_id)
        state = self.sealer.seal(_PREFIX + hold_id, identity, where, request["method"])
        result = {"resultType": "input_required", "inputRequests": asking.open_questions(), "requestState": state}
        return {"jsonrpc": "2.0", "id": request["id"], "result": result}, True

    def full(self) -> bool:
        return len(self._held) >= self.max_held

    def resume(self, request: Message, identity: str, where: str) -> tuple[asyncio.Task[Message], Asking] | None:
        """The held call a retry continues, its answers given; None for a retry that is not of a held call."""
        params = request.get("params") or {}
        peeked = self.sealer.peek(params.get("requestState"))
        if peeked is None or not peeked.startswith(_PREFIX):
            return None  # no state, or one that is not a hold's: the forwarder checks a 2026 server's
        state = self.sealer.open(params["requestState"], identity, where, request["method"])
        held = self._held.pop(state[len(_PREFIX) :], None)
        if held is None:
            raise InvalidParams(
                "Invalid params: requestState names a call this gateway no longer holds: it waited longer than "
                f"{self.hold_seconds:g}s, or another replica holds it; send the request again without it",
                data={"reason": "state_expired"},
            )
        if held.expiry is not None:
            held.expiry.cancel()
        self._on_change(held.where, False)
        held.asking.answer(params.get("inputResponses"))
        return held.call, held.asking

    def _expire(self, hold_id: str) -> None:
        held = self._held.pop(hold_id, None)
        if held is not None:
            self._on_change(held.where, False)
            held.call.cancel()  # the server's request is cancelled upstream

    def close(self) -> None:
        for hold_id in list(self._held):
            self._expire(hold_id)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
