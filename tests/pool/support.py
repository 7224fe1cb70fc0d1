"""What the pool tests share: a clock the test moves by hand and an observer that counts what it hears."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gateway.events import NullObserver, PoolEvent


@dataclass
class FakeClock:
    """`time.monotonic` stand-in: time moves only when the test says so."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingObserver(NullObserver):
    """An `Observer` that counts pool events (all servers together) and remembers starts and stops."""

    hits: int = 0
    misses: int = 0
    evictions: Counter[str] = field(default_factory=Counter)
    health_check_failures: int = 0
    acquires: int = 0  # pool_acquired calls: every acquire, whether it succeeded or not
    starts: list[str] = field(default_factory=list)
    stops: list[tuple[str, str]] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)

    def pool_event(self, server_id: str, event: str, reason: str | None = None) -> None:
        if event == PoolEvent.HIT:
            self.hits += 1
        elif event == PoolEvent.MISS:
            self.misses += 1
        elif event == PoolEvent.EVICTED:
            assert reason, "an eviction without a reason"
            self.evictions[reason] += 1
        elif event == PoolEvent.HEALTH_CHECK_FAILED:
            self.health_check_failures += 1
        else:
            raise AssertionError(f"unknown pool event {event!r}")

    def pool_acquired(self, server_id: str, seconds: float) -> None:
        assert seconds >= 0
        self.acquires += 1

    def server_started(self, server_id: str, start_seconds: float) -> None:
        self.starts.append(server_id)

    def server_stopped(self, server_id: str, reason: str) -> None:
        self.stops.append((server_id, str(reason)))

    def rejected(self, server_id: str | None, reason: str) -> None:
        self.rejections[reason] += 1
