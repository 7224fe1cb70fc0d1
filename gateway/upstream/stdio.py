"""A stdio MCP server as a child process of the gateway: newline-delimited JSON on stdin/stdout.

The child gets the MCP SDK's minimal environment plus its configured `env`, so the gateway's own
secrets never reach it. It runs in a process group of its own (so `npx` and the `node` it spawns
stop together) and dies with the gateway. Its stderr is logged line by line, tagged with the
server id. A stdout line that is not JSON, or over the message size limit, is logged and skipped
(the second fails the request it answered); EOF fails every in-flight request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal

from mcp.client.stdio import get_default_environment

from gateway.config import StdioServer
from gateway.errors import UpstreamClosed, UpstreamUnavailable
from gateway.protocol import Message, dumps
from gateway.upstream import era
from gateway.upstream.base import DEFAULT_MAX_MESSAGE, Pending, UpstreamHandler, UpstreamSession
from gateway.upstream.child import Child
from gateway.upstream.framing import LineSplitter

log = logging.getLogger(__name__)
stderr_log = logging.getLogger("gateway.upstream.stderr")

_READ_CHUNK = 256 * 1024
_HIGH_WATER = 256 * 1024
_EXIT_GRACE = 2.0  # seconds a process gets to exit after closing its stdout
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_environment(config: StdioServer) -> dict[str, str]:
    return {**get_default_environment(), **config.env}


class StdioSession(UpstreamSession):
    transport = "stdio"
    carried_by = " on stdout"

    def __init__(
        self,
        server_id: str,
        config: StdioServer,
        handler: UpstreamHandler | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        super().__init__(server_id, handler, max_message_bytes)
        self.config = config
        self._proc: Child | None = None
        self._readers: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, timeout: float) -> None:
        """Spawn the process and learn its era (see `UpstreamSession.connect`) within `timeout` seconds."""
        try:
            self._proc = await Child.spawn(
                [self.config.command, *self.config.args],
                env=child_environment(self.config),
                cwd=self.config.cwd,
                limit=_READ_CHUNK,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            self._mark_closed("unavailable", f"cannot start {self.config.command!r}: {exc.strerror or exc}")
            raise UpstreamUnavailable(
                f"server {self.server_id!r} could not be started: {exc.strerror or exc}",
                data={"server": self.server_id, "reason": "spawn_failed"},
            ) from None
        self._readers = [
            asyncio.create_task(self._read_stdout(), name=f"{self.server_id}-stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{self.server_id}-stderr"),
        ]
        await era.connect(self, timeout, self.config.protocol)

    async def _send(self, message: Message, pending: Pending | None) -> None:
        proc = self._proc
        if proc is None or self.closed:
            raise UpstreamClosed(
                f"server {self.server_id!r} is not running", data={"server": self.server_id, "reason": "not_running"}
            )
        try:
            proc.stdin.write(dumps(message) + b"\n")
            if proc.stdin.transport.get_write_buffer_size() > _HIGH_WATER:
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError) as exc:  # RuntimeError: transport closed
            self._mark_closed("crash", f"broken pipe: {exc}")
            raise UpstreamClosed(
                f"server {self.server_id!r} closed its stdin", data={"server": self.server_id, "reason": "crash"}
            ) from None

    async def _read_stdout(self) -> None:
        """Read messages until EOF. Nothing a server writes ends this task early: that would leave
        the server looking alive while nobody reads its answers (a wedge)."""
        detail = "end of output"
        try:
            await self._read_messages()
        except Exception:
            log.exception("server %s: reading its stdout failed; stopping it", self.server_id)
            detail = "the gateway failed to read its output"
            self._kill()
        await self._reap(detail)

    async def _read_messages(self) -> None:
        assert self._proc is not None
        stdout = self._proc.stdout
        splitter = LineSplitter(self.max_message_bytes)
        while chunk := await stdout.read(_READ_CHUNK):
            for line in splitter.feed(chunk):
                self._receive(line)
        last = splitter.finish()
        if last is not None:
            self._receive(last)

    async def _reap(self, detail: str) -> None:
        """The process's stdout ended: wait for its exit (or make it), and close what it leaves."""
        assert self._proc is not None
        if self.closed:
            code = await self._proc.wait()  # the gateway is stopping it, with its own grace period
        else:
            try:  # EOF on stdout: the process is exiting, or it closed stdout and can never answer again
                code = await asyncio.wait_for(asyncio.shield(self._proc.wait()), _EXIT_GRACE)
            except TimeoutError:
                detail = "closed its stdout but kept running; killed"
                self._kill()
                code = await self._proc.wait()
        self._kill_group()  # what the server started goes with it, whether it was asked to stop or not
        # Its stdin only: stderr is read to its end, so the last lines of a crash reach the log.
        self._proc.stdin.close()
        if not self.closed:
            self._mark_closed("crash", f"{detail}; process exited with code {code}")

    async def _read_stderr(self) -> None:
        assert self._proc is not None
        while True:
            try:
                line = await self._proc.stderr.readline()
            except ValueError:
                continue
            if not line:
                return
            stderr_log.info("[%s] %s", self.server_id, line.decode("utf-8", "replace").rstrip())

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def _kill_group(self) -> None:
        """SIGKILL the process group even when its leader is gone: its children may linger."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    async def _close_transport(self, grace: float = 3.0) -> None:
        """Close stdin, then SIGTERM the process group, then SIGKILL: the MCP stdio shutdown sequence."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(Exception):
            proc.stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                self._signal_group(sig)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), grace / 3 if sig is None else grace)
                break
            except TimeoutError:
                continue
        self._kill_group()
        for task in self._readers:
            task.cancel()
        proc.close()
