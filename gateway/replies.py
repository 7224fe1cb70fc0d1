"""The reply to one POSTed request: the body read under its limit, and the answer sent as JSON or as SSE.

A reply is JSON when the upstream's answer is all there is, and becomes an SSE stream as soon as a
related message (progress, a log line, a server-to-client request) arrives first, so the common
call costs no streaming. A 2026 request's reply (`ModernChannel`) carries what that revision allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any

from gateway import modern
from gateway.errors import MethodNotFound, TooDeep, UpstreamInvalid
from gateway.events import Rejection
from gateway.headers import media_quality
from gateway.holds import Asking
from gateway.protocol import Message, dumps, error_response
from gateway.responses import JSON, HttpError, Receive, Send, send_body
from gateway.sessions import DownstreamSession
from gateway.stream import EventStream, sse_frame

SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def encode_response(response: Message) -> bytes:
    """A response as JSON; an upstream answer nested too deeply to be written becomes an error saying so."""
    try:
        return dumps(response)
    except TooDeep:
        error = UpstreamInvalid("the server's answer is nested too deeply to be passed on", data={"reason": "too_deep"})
        return dumps(error_response(response.get("id"), error.to_error()))


def acceptable(headers: dict[bytes, bytes]) -> tuple[bool, bool]:
    """Whether the client takes a JSON reply, and an SSE one; 406 when it takes neither."""
    json_ok, sse_ok = _reply_kinds(headers.get(b"accept"))
    if not json_ok and not sse_ok:
        raise HttpError(406, "Not Acceptable: Accept must include application/json and text/event-stream")
    return json_ok, sse_ok


@functools.lru_cache(maxsize=256)  # a client sends the same Accept on every request: parse it once
def _reply_kinds(accept: bytes | None) -> tuple[bool, bool]:
    value = accept.decode("latin-1") if accept is not None else None
    return media_quality(value, "application/json") > 0, media_quality(value, "text/event-stream") > 0


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The request body, refused with 413 before it is read whole when it is over `limit`."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(
            413,
            f"request body of {int(declared)} bytes is over the limit of {limit} bytes",
            rejection=Rejection.BODY_TOO_LARGE,
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise HttpError(400, "client disconnected before sending the whole body")
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body is over the limit of {limit} bytes", rejection=Rejection.BODY_TOO_LARGE)
        chunks.append(chunk)
        if not event.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class PostChannel:
    """The reply to one POSTed request, as a `ClientChannel` for the upstream's related messages.

    Related messages switch the reply to an SSE stream, bounded like every client stream: what does
    not fit while the client is not reading is dropped (notifications) or refused (server requests),
    and the response itself always goes through.
    """

    def __init__(
        self, session: DownstreamSession, send: Send, json_ok: bool, sse_ok: bool, on_overflow: Callable[[], None]
    ) -> None:
        self.session = session
        self._send = send
        self._json_ok = json_ok
        self._sse_ok = sse_ok
        self._on_overflow = on_overflow
        self._stream: EventStream | None = None
        self._writer: asyncio.Task[None] | None = None

    def notify(self, message: Message) -> bool:
        if not self._sse_ok:
            return self.session.notify(message)  # the GET stream, if the client opened one
        return self._start_stream().send(message)

    async def request(self, message: Message) -> Message:
        return await self.session.relay(message, self.notify if self._sse_ok else None)

    def _start_stream(self) -> EventStream:
        if self._stream is None:
            self._stream = EventStream(self.session.stream_buffer, "reply", self._on_overflow)
            self._writer = asyncio.create_task(self._write(self._stream))
        return self._stream

    async def _write(self, stream: EventStream) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": SSE})
        while (event := await stream.get()) is not None:
            await self._send({"type": "http.response.body", "body": event, "more_body": True})
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def finish(self, response: Message, status: int = 200) -> None:
        """Send the response: as JSON when no stream was started (with `status`), else as the stream's last event."""
        body = encode_response(response)
        if self._stream is None and self._json_ok:
            await send_body(self._send, status, body, JSON)
            return
        stream = self._start_stream()
        stream.put(sse_frame(body), force=True)
        stream.close()
        assert self._writer is not None
        await self._writer


class ModernChannel(PostChannel):
    """The reply to one 2026 request: progress, and log lines at the level it asked for.

    The 2026 revision has no server-to-client requests: what a 2025 server asks mid-call goes to the
    call's `Asking`, and the client answers it by sending the call again (`gateway.holds`).
    """

    def __init__(self, envelope: modern.Envelope, asking: Asking, holds_full: Callable[[], bool], *args: Any) -> None:
        super().__init__(*args)
        self.envelope = envelope
        self.asking = asking
        self._holds_full = holds_full

    def notify(self, message: Message) -> bool:
        return modern.wants_notification(message, self.envelope) and super().notify(message)

    async def request(self, message: Message) -> Message:
        if self._holds_full():
            raise MethodNotFound(
                "the client cannot be asked now: the gateway holds its maximum of calls waiting for answers",
                data={"method": message.get("method"), "reason": "held_calls"},
            )
        return await self.asking.ask(message)


async def pump(stream: EventStream, send: Send, receive: Receive, keepalive: float) -> None:
    """Write a long-lived stream (a GET stream, a listen stream) until it ends or the client goes away.

    A comment line goes out after `keepalive` quiet seconds, so proxies keep the connection open.
    """
    await send({"type": "http.response.start", "status": 200, "headers": SSE})
    disconnected = asyncio.create_task(_wait_disconnect(receive))
    try:
        while not disconnected.done():
            getter = asyncio.ensure_future(stream.get())
            done, _ = await asyncio.wait({getter, disconnected}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if not done:
                    await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                continue
            event = getter.result()
            if event is None:
                break
            await send({"type": "http.response.body", "body": event, "more_body": True})
    finally:
        disconnected.cancel()
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
