"""A child process with asyncio streams on its stdin, stdout and stderr, the same on every event loop.

asyncio's own subprocess support is the event loop's, and uvloop's leaves duplicates of the child's
stdio pipes open inside the child: a server that closes its stdout never reaches EOF there, so the
gateway could not tell it can no longer answer. Here the standard library's `Popen` spawns (its
pipes are close-on-exec, and every other descriptor is closed), the loop only reads and writes the
pipes, and the exit is awaited through a pidfd (a short poll where there is none).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

_POLL_SECONDS = 0.05  # how often the exit is checked without a pidfd (not Linux)


class Child:
    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        readers: Sequence[asyncio.BaseTransport],
    ) -> None:
        self._popen = popen
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._readers = readers
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watch_exit()

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        cwd: str | None,
        limit: int,
        preexec_fn: Callable[[], None] | None = None,
    ) -> Child:
        """Start `argv` in a session (process group) of its own; raises OSError when it cannot start."""
        popen = subprocess.Popen(  # noqa: ASYNC220 - fork and exec only; the loop gets the pipes (module doc)
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec_fn,  # a prctl call, between fork and exec
            bufsize=0,
        )
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        loop = asyncio.get_running_loop()
        try:
            stdout, stdout_pipe = await _read_stream(popen.stdout, limit)
            stderr, stderr_pipe = await _read_stream(popen.stderr, limit)
            transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, popen.stdin)
        except BaseException:
            popen.kill()
            popen.wait()
            raise
        stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        return cls(popen, stdin, stdout, stderr, [stdout_pipe, stderr_pipe])

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """The exit code, once the process has exited (and been reaped)."""
        return await asyncio.shield(self._exit)

    def close(self) -> None:
        """Close the gateway's ends of the pipes, unread output and all (the process is its owner's
        to stop). Pipes still open at the child's exit also close themselves once read to the end."""
        self.stdin.close()
        for transport in self._readers:
            transport.close()

    def _watch_exit(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfds here: poll
            self._poller = loop.create_task(self._poll_exit(), name=f"wait-{self.pid}")
            return

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._reap()

        loop.add_reader(pidfd, exited)

    async def _poll_exit(self) -> None:
        while self._popen.poll() is None:  # noqa: ASYNC110 - no pidfd to wait on here: poll the exit
            await asyncio.sleep(_POLL_SECONDS)
        self._reap()

    def _reap(self) -> None:
        code = self._popen.wait()  # it has exited: this does not block
        with contextlib.suppress(asyncio.InvalidStateError):
            self._exit.set_result(code)


class _PipeProtocol(asyncio.StreamReaderProtocol):
    def eof_received(self) -> bool:
        super().eof_received()
        return False  # nothing more can come: the transport closes its pipe (uvloop's kept it open)


async def _read_stream(pipe: Any, limit: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    stream = asyncio.StreamReader(limit=limit)
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: _PipeProtocol(stream), pipe)
    return stream, transport
