"""Watermarks: bounded out-of-orderness per partition, and idleness across partitions.

A watermark ``W`` promises that no more events with ``ts_ms <= W`` are expected. Per source
partition it follows Flink's ``BoundedOutOfOrdernessWatermarks``: ``W = max_ts_seen - d - 1`` for a
declared maximum out-of-orderness ``d``, and ``NO_WATERMARK`` before the first event. A source's
watermark is the minimum over its partitions, except that a partition with no event for longer than
the idle timeout (processing time, ``now_ms`` passed in) is idle and no longer holds the minimum back;
it becomes active again with its next event. The combined watermark never goes backwards, so events
of a partition that wakes up behind it may be late. When every partition is idle the watermark
stays where it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from freshet.windows import NO_WATERMARK

if TYPE_CHECKING:
    from freshet.spec import Source


def bounded_out_of_orderness(max_ts_ms: int | None, max_out_of_orderness_ms: int) -> int:
    """Watermark after events up to ``max_ts_ms``: ``max_ts_ms - max_out_of_orderness_ms - 1``.

    >>> bounded_out_of_orderness(10_000, 2_000)
    7999
    >>> bounded_out_of_orderness(None, 2_000) == NO_WATERMARK
    True
    """
    if max_ts_ms is None:
        return NO_WATERMARK
    return max_ts_ms - max_out_of_orderness_ms - 1


def watermarks_after_each(ts_ms: list[int], max_out_of_orderness_ms: int) -> list[int]:
    """The watermark after each event of one partition, in arrival order (never decreasing).

    >>> watermarks_after_each([100, 90, 130, 120], 10)
    [89, 89, 119, 119]
    """
    out, max_ts = [], None
    for ts in ts_ms:
        max_ts = ts if max_ts is None else max(max_ts, ts)
        out.append(bounded_out_of_orderness(max_ts, max_out_of_orderness_ms))
    return out


@dataclass(frozen=True)
class PartitionClock:
    """What the watermark needs of one partition: its greatest event time and when it last had an event."""

    max_ts_ms: int | None
    last_event_at_ms: int
    """Processing time of the partition's last event, or of its assignment if it has had none."""


@dataclass(frozen=True)
class WatermarkPolicy:
    """A source's declared watermark: maximum out-of-orderness and optional idle timeout."""

    max_out_of_orderness_ms: int
    idle_timeout_ms: int | None = None

    def __post_init__(self) -> None:
        if self.max_out_of_orderness_ms < 0:
            raise ValueError(f"max out-of-orderness must be >= 0, got {self.max_out_of_orderness_ms} ms")
        if self.idle_timeout_ms is not None and self.idle_timeout_ms <= 0:
            raise ValueError(f"idle timeout must be positive, got {self.idle_timeout_ms} ms")

    @classmethod
    def from_source(cls, source: Source) -> WatermarkPolicy:
        """The watermark a declared source promises."""
        return cls(source.watermark.max_out_of_orderness_ms, source.watermark.idle_timeout_ms)

    def observe(self, clock: PartitionClock, ts_ms: int, now_ms: int) -> PartitionClock:
        """The partition's clock after an event at ``ts_ms`` arrived at processing time ``now_ms``."""
        max_ts = ts_ms if clock.max_ts_ms is None else max(clock.max_ts_ms, ts_ms)
        return replace(clock, max_ts_ms=max_ts, last_event_at_ms=now_ms)

    def is_idle(self, clock: PartitionClock, now_ms: int) -> bool:
        """Whether the partition has had no event for longer than the idle timeout."""
        return self.idle_timeout_ms is not None and now_ms - clock.last_event_at_ms > self.idle_timeout_ms

    def combined(
        self, clocks: Mapping[int, PartitionClock], now_ms: int, previous_ms: int = NO_WATERMARK
    ) -> int:
        """The source's watermark: the minimum over active partitions, never below ``previous_ms``.

        >>> p = WatermarkPolicy(max_out_of_orderness_ms=10, idle_timeout_ms=1_000)
        >>> clocks = {0: PartitionClock(500, last_event_at_ms=0), 1: PartitionClock(200, last_event_at_ms=0)}
        >>> p.combined(clocks, now_ms=1_000)
        189
        >>> p.combined({**clocks, 1: PartitionClock(200, last_event_at_ms=-1)}, now_ms=1_000)
        489
        """
        active = [c for c in clocks.values() if not self.is_idle(c, now_ms)]
        if not active:
            return previous_ms
        low = min(bounded_out_of_orderness(c.max_ts_ms, self.max_out_of_orderness_ms) for c in active)
        return max(previous_ms, low)
