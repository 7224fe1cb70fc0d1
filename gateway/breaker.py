"""A circuit breaker per server: after repeated failures to open (or health-check) a session with it,
fail fast for a cooldown instead of waiting on it, then let exactly one probe through.

The pool asks it before creating a session and tells it how each creation or health check went;
its state is `mcp_session_pool_circuit_state` (0 closed, 1 half-open, 2 open).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class CircuitState(IntEnum):
    """The value of `mcp_session_pool_circuit_state`."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class Breaker:
    threshold: int
    cooldown: float
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def admit(self, now: float) -> bool:
        """May a new session be created now? In half-open state, exactly one probe may."""
        if self.state is CircuitState.OPEN and now - self.opened_at >= self.cooldown:
            self.state = CircuitState.HALF_OPEN
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.state, self.failures, self.probing = CircuitState.CLOSED, 0, False

    def failed(self, now: float) -> bool:
        """Count a failure; True when it opens the breaker."""
        self.failures += 1
        self.probing = False
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.threshold:
            opening = self.state is not CircuitState.OPEN
            self.state, self.opened_at = CircuitState.OPEN, now
            return opening
        return False
