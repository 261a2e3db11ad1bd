"""Watermarks: bounded out-of-orderness per partition, the minimum across partitions, idleness."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freshet.spec import load_feature_set
from freshet.watermarks import (
    PartitionClock,
    WatermarkPolicy,
    bounded_out_of_orderness,
    watermarks_after_each,
)
from freshet.windows import NO_WATERMARK

POLICY = WatermarkPolicy(max_out_of_orderness_ms=100, idle_timeout_ms=1_000)


@pytest.mark.parametrize(
    ("max_ts_ms", "bound_ms", "expected"),
    [(None, 100, NO_WATERMARK), (1_000, 0, 999), (1_000, 100, 899), (0, 0, -1)],
)
def test_bounded_out_of_orderness(max_ts_ms: int | None, bound_ms: int, expected: int) -> None:
    assert bounded_out_of_orderness(max_ts_ms, bound_ms) == expected


@given(st.lists(st.integers(0, 10_000)), st.integers(0, 500))
def test_watermarks_after_each_trail_the_greatest_time_seen(ts_ms: list[int], bound_ms: int) -> None:
    marks = watermarks_after_each(ts_ms, bound_ms)
    assert marks == sorted(marks)
    for i, mark in enumerate(marks):
        assert mark == max(ts_ms[: i + 1]) - bound_ms - 1
        # an event no further than the bound behind the greatest time seen is never late
        assert all(mark < ts for ts in ts_ms[i + 1 :] if ts >= max(ts_ms[: i + 1]) - bound_ms)


def clocks(*entries: tuple[int | None, int]) -> dict[int, PartitionClock]:
    return {p: PartitionClock(max_ts, last_at) for p, (max_ts, last_at) in enumerate(entries)}


@pytest.mark.parametrize(
    ("partitions", "now_ms", "previous_ms", "expected"),
    [
        # the slowest active partition holds the watermark
        (clocks((5_000, 0), (3_000, 0)), 0, NO_WATERMARK, 2_899),
        # a partition that never had an event holds it back ...
        (clocks((5_000, 0), (None, 0)), 1_000, NO_WATERMARK, NO_WATERMARK),
        # ... until it is idle: strictly longer than the timeout without an event
        (clocks((5_000, 1_001), (None, 0)), 1_001, NO_WATERMARK, 4_899),
        (clocks((5_000, 0), (3_000, 0)), 1_000, NO_WATERMARK, 2_899),  # exactly the timeout: not idle
        (clocks((5_000, 500), (3_000, 0)), 1_001, NO_WATERMARK, 4_899),  # partition 1 idle
        # every partition idle: the watermark stays where it was
        (clocks((5_000, 0), (3_000, 0)), 5_000, 1_234, 1_234),
        # it never goes backwards, e.g. when an idle partition wakes up behind it
        (clocks((5_000, 4_000), (3_000, 4_000)), 4_000, 4_899, 4_899),
    ],
)
def test_combined_watermark(
    partitions: dict[int, PartitionClock], now_ms: int, previous_ms: int, expected: int
) -> None:
    assert POLICY.combined(partitions, now_ms, previous_ms) == expected


def test_without_idle_timeout_a_silent_partition_holds_the_watermark_forever() -> None:
    policy = WatermarkPolicy(max_out_of_orderness_ms=100)
    assert policy.combined(clocks((5_000, 0), (None, 0)), now_ms=10**12) == NO_WATERMARK


def test_an_idle_partition_wakes_up_with_its_next_event() -> None:
    state = clocks((5_000, 2_000), (3_000, 0))
    assert POLICY.combined(state, now_ms=2_000) == 4_899
    state[1] = POLICY.observe(state[1], ts_ms=3_500, now_ms=2_000)
    assert state[1] == PartitionClock(3_500, 2_000)
    assert POLICY.combined(state, now_ms=2_000) == 3_399
    assert POLICY.combined(state, now_ms=2_000, previous_ms=4_899) == 4_899


def test_observe_keeps_the_greatest_event_time() -> None:
    clock = POLICY.observe(PartitionClock(None, 0), ts_ms=700, now_ms=5)
    assert POLICY.observe(clock, ts_ms=600, now_ms=9) == PartitionClock(700, 9)


@pytest.mark.parametrize(
    ("bound_ms", "idle_ms", "message"),
    [(-1, None, "max out-of-orderness must be >= 0"), (0, 0, "idle timeout must be positive")],
)
def test_invalid_policies_are_refused(bound_ms: int, idle_ms: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WatermarkPolicy(bound_ms, idle_ms)


def test_from_source_reads_the_declared_watermark() -> None:
    features = load_feature_set(Path(__file__).parent.parent / "feature_defs")
    assert WatermarkPolicy.from_source(features.source("engagement")) == WatermarkPolicy(5_000, 30_000)
