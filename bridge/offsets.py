"""At-least-once offset bookkeeping: commit a partition only up to its first unfinished record.

Records of one partition finish out of order (concurrent requests, retries, micro-batches), so the
committable position of a partition is the lowest offset still in flight, or one past the highest
offset seen when nothing is in flight. A crash then re-delivers every unfinished record (and maybe some
finished ones: duplicates, never losses). Each assignment of a partition gets a new epoch so work
finishing after a rebalance cannot move a position the partition's new owner now controls.

Thread-safe: the consumer's rebalance callbacks run on the consumer thread, everything else on the
event loop.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

TP = tuple[str, int]  # (topic, partition)


@dataclass
class _Partition:
    epoch: int
    pending: dict[int, float] = field(default_factory=dict)  # offset -> when consumed (monotonic seconds)
    end: int | None = None  # one past the highest offset seen
    committed: int | None = None  # last position committed by us

    def position(self) -> int | None:
        if self.pending:
            return min(self.pending)
        return self.end


class OffsetTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[TP, _Partition] = {}
        self._epochs = itertools.count(1)

    def assign(self, tps: list[TP]) -> None:
        """Start tracking newly assigned partitions (a re-assigned partition starts over)."""
        with self._lock:
            for tp in tps:
                self._parts[tp] = _Partition(next(self._epochs))

    def revoke(self, tps: list[TP]) -> None:
        """Forget partitions; in-flight work of theirs becomes stale (see `done`)."""
        with self._lock:
            for tp in tps:
                self._parts.pop(tp, None)

    def assigned(self) -> list[TP]:
        with self._lock:
            return list(self._parts)

    def add(self, tp: TP, offset: int, now: float | None = None) -> int | None:
        """A record was consumed: it is in flight until `done`. Returns the partition epoch (None: not ours)."""
        with self._lock:
            part = self._parts.get(tp)
            if part is None:
                return None
            part.pending.setdefault(offset, time.monotonic() if now is None else now)
            if part.end is None or offset + 1 > part.end:
                part.end = offset + 1
            return part.epoch

    def current(self, tp: TP, epoch: int) -> bool:
        """Is work of this epoch still ours to commit (partition not revoked or re-assigned since)?"""
        with self._lock:
            part = self._parts.get(tp)
            return part is not None and part.epoch == epoch

    def done(self, tp: TP, offset: int, epoch: int) -> bool:
        """The record's outcome (prediction or DLQ record) is acknowledged by the broker."""
        with self._lock:
            part = self._parts.get(tp)
            if part is None or part.epoch != epoch:
                return False
            part.pending.pop(offset, None)
            return True

    def committable(self, tps: list[TP] | None = None) -> list[tuple[str, int, int]]:
        """(topic, partition, position) for partitions whose position moved past the last commit."""
        with self._lock:
            out = []
            for tp, part in self._parts.items():
                if tps is not None and tp not in tps:
                    continue
                pos = part.position()
                if pos is not None and pos != part.committed:
                    out.append((tp[0], tp[1], pos))
            return out

    def mark_committed(self, offsets: list[tuple[str, int, int]]) -> None:
        with self._lock:
            for topic, partition, pos in offsets:
                part = self._parts.get((topic, partition))
                if part is not None:
                    part.committed = pos

    def position(self, tp: TP) -> int | None:
        """Where a restart would resume this partition (None: nothing consumed yet)."""
        with self._lock:
            part = self._parts.get(tp)
            return None if part is None else part.position()

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(p.pending) for p in self._parts.values())

    def oldest(self, now: float | None = None) -> dict[TP, tuple[int, float] | None]:
        """Per assigned partition: (offset, age in seconds) of its oldest unfinished record, None when idle.

        The lowest pending offset is the one that holds the partition's commit back, so its age is what
        says "this partition is stuck" (`bridge_oldest_unfinished_age_seconds`, /readyz)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            out: dict[TP, tuple[int, float] | None] = {}
            for tp, part in self._parts.items():
                if part.pending:
                    offset = min(part.pending)
                    out[tp] = (offset, max(0.0, now - part.pending[offset]))
                else:
                    out[tp] = None
            return out
