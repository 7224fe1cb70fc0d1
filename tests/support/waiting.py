"""Waiting on a condition under a deadline, never on the clock: `wait_for` in plain tests,
`eventually` in async ones (it never blocks the event loop).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def eventually(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """`wait_for` for async tests: polls (plain or awaitable conditions) without blocking the event loop."""
    try:
        with anyio.fail_after(timeout):
            while True:
                value = condition()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
