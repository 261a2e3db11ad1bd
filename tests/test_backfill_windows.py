"""Backfill's vectorized feature columns equal the stream's window semantics, replayed event by event.

The oracle is ``freshet.replay.evaluate`` over the events that arrived before the watermark reached
``until`` (each watermark capped at ``until``), then ``final_values``: the firing a replica keeps. The
streams are generated: arrival order shuffled within the out-of-orderness bound, events far too late,
raw events delivered twice, and every aggregation, window shape, lateness and late policy.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from freshet.aggregators import Aggregation, stable_hash64
from freshet.offline.columns import FeatureEvents
from freshet.offline.windowed import exact_column, final_column
from freshet.replay import FinalValue, evaluate, final_values
from freshet.watermarks import watermarks_after_each
from freshet.windows import END_OF_STREAM, NO_WATERMARK, Dropped, Late, WindowedAggregate, WindowSpec

AGGREGATIONS: list[Aggregation] = ["count", "sum", "mean", "min", "max", "last", "approx_distinct"]
Stream = list[tuple[int, int, float]]  # (ts_ms, item, value) in arrival order


@st.composite
def features(draw: st.DrawFn) -> WindowedAggregate:
    size = draw(st.sampled_from([10, 20, 30, 60]))
    slide = draw(st.sampled_from([None, *[s for s in (5, 10, 15, 20, 30) if s <= size and size % s == 0]]))
    policy = draw(st.sampled_from(["update", "side_output", "drop"]))
    lateness = 0 if policy == "drop" else draw(st.sampled_from([0, 3, 10, 25, 70]))
    default = draw(st.sampled_from([0.0, -1.5, 7.0]))
    return WindowedAggregate(
        WindowSpec(size, slide), draw(st.sampled_from(AGGREGATIONS)), lateness, policy, default
    )


@st.composite
def streams(draw: st.DrawFn, bound_ms: int) -> Stream:
    """Events in time order, then shuffled by a jitter within the bound; some late, some delivered twice."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    n = draw(st.integers(1, 60))
    items = draw(st.integers(1, 4))
    late_share = draw(st.sampled_from([0.0, 0.1, 0.3, 0.6]))
    push_share = draw(st.sampled_from([0.0, 0.05, 0.2]))
    ts, events = 1_000, []
    for _ in range(n):
        ts += rng.choice([0, 0, 1, 2, 3, 5, 9, 17])
        value = rng.choice([-2.5, -0.0, 0.0, 1.0, 1.0, 3.25, 1e300, 40.0])
        events.append((ts, rng.randrange(items), value))
    # arrival order: by time plus a jitter within the bound
    keyed = [(e[0] + rng.randint(0, bound_ms), i, e) for i, e in enumerate(events)]
    stream = [e for _, _, e in sorted(keyed)]
    for i in range(len(stream)):
        if rng.random() < late_share:
            t, item, v = stream[i]
            late_by_ms = rng.choice([rng.randint(1, 8), rng.randint(1, 30), rng.randint(30, 120)])
            stream[i] = (t - late_by_ms, item, v)
    for i in sorted(rng.sample(range(len(stream)), k=int(len(stream) * push_share)), reverse=True):
        # item 9 runs ahead, pushing the watermark: the events after it come late
        stream.insert(i, (stream[i][0] + rng.randint(5, 40), 9, 1.0))
    for i in sorted(rng.sample(range(len(stream)), k=len(stream) // 6), reverse=True):
        stream.insert(i + rng.randint(0, 3), stream[i])  # the same raw event again, a little later
    return stream


def untils(stream: Stream, bound_ms: int) -> st.SearchStrategy[int | None]:
    """The end of the stream, any time around it, or just above a watermark it reached (late joins happen there)."""
    times = [t for t, _, _ in stream]
    reached = sorted(set(watermarks_after_each(times, bound_ms)))
    near = st.builds(lambda w, d: w + d, st.sampled_from(reached), st.integers(1, 12))
    return st.one_of(st.none(), st.integers(min(times), max(times) + 100), near)


def oracle(
    feature: WindowedAggregate, stream: Stream, bound_ms: int, until_ms: int | None
) -> tuple[dict[int, FinalValue], int]:
    """Final cells and too-late events of the stream cut where its watermark reaches ``until_ms``."""
    watermarks = watermarks_after_each([t for t, _, _ in stream], bound_ms)
    before = [NO_WATERMARK, *watermarks[:-1]]
    keep = len(stream) if until_ms is None else sum(1 for w in before if w < until_ms)
    capped = [w if until_ms is None else min(w, until_ms) for w in watermarks[:keep]]
    events = [(t, item, v) for t, item, v in stream[:keep]]
    end = END_OF_STREAM if until_ms is None else until_ms
    outputs = evaluate(events, feature, watermarks=capped, end_watermark_ms=end)
    late = sum(isinstance(out, Late | Dropped) for _, out in outputs)
    return final_values(outputs), late


def columns_of(
    feature: WindowedAggregate, stream: Stream, bound_ms: int, until_ms: int | None
) -> FeatureEvents:
    """The stream's events as backfill gathers them: each with the watermark it arrived under, cut at until."""
    watermarks = watermarks_after_each([t for t, _, _ in stream], bound_ms)
    before = np.array([NO_WATERMARK, *watermarks[:-1]], dtype=np.int64)
    keep = np.ones(len(stream), bool) if until_ms is None else before < until_ms
    values: np.ndarray | None = np.array([v + 0.0 for _, _, v in stream])
    if feature.aggregation == "approx_distinct":
        values = np.array([stable_hash64(v) for _, _, v in stream], dtype=np.uint64)
    elif feature.aggregation == "count":
        values = None
    events = FeatureEvents(np.array([i for _, i, _ in stream], np.int64), np.array([t for t, _, _ in stream], np.int64),
                           before, values)  # fmt: skip
    return events.take(keep)


def as_cells(column_items: np.ndarray, values: np.ndarray, versions: np.ndarray) -> dict[int, FinalValue]:
    return {
        int(i): FinalValue(float(v), int(ver))
        for i, v, ver in zip(column_items, values, versions, strict=True)
    }


def encodable(cells: dict[int, FinalValue]) -> bool:
    return all(abs(c.value) <= float(np.finfo(np.float32).max) for c in cells.values())


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_vectorized_column_equals_the_replayed_stream(data: st.DataObject) -> None:
    feature = data.draw(features(), "feature")
    bound_ms = data.draw(st.sampled_from([0, 3, 12]), "bound_ms")
    stream = data.draw(streams(bound_ms), "stream")
    until_ms = data.draw(untils(stream, bound_ms), "until_ms")
    expected, late = oracle(feature, stream, bound_ms, until_ms)
    result = final_column(feature, columns_of(feature, stream, bound_ms, until_ms), until_ms)
    got = as_cells(result.column.item_ids, result.column.values, result.column.versions)
    for cell in expected.values():
        end = cell.version >> 20
        empty = not any(end - feature.window.size_ms <= t < end for t, _, _ in stream)
        event(
            "newest: an empty window's default"
            if empty
            else f"newest: firing {min(cell.version & 0xFFFFF, 2)}"
        )
    event(f"too late: {min(late, 3)}{'+' if late >= 3 else ''}")
    event(f"lateness > slide: {feature.allowed_lateness_ms > feature.window.step_ms}")
    if encodable(expected):
        assert got == expected
    else:  # the job skips a firing float32 cannot hold; the column keeps the newest one it can
        event("a firing beyond float32 was skipped")
        assert set(got) <= set(expected) and encodable(got)
    assert result.too_late == late


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_exact_replay_per_item_equals_the_whole_stream(data: st.DataObject) -> None:
    """Replaying one item alone, with the watermarks its events arrived under, gives the whole stream's cells."""
    feature = data.draw(features().filter(lambda f: f.aggregation != "approx_distinct"), "feature")
    stream = data.draw(streams(5), "stream")
    until_ms = data.draw(untils(stream, 5), "until_ms")
    expected, _ = oracle(feature, [(t, i, v if abs(v) < 1e30 else 2.0) for t, i, v in stream], 5, until_ms)
    events = columns_of(feature, [(t, i, v if abs(v) < 1e30 else 2.0) for t, i, v in stream], 5, until_ms)
    column = exact_column(feature, events, np.unique(events.item_ids), until_ms)
    assert as_cells(column.item_ids, column.values, column.versions) == expected


@pytest.mark.parametrize(
    ("arrivals", "until_ms", "expected"),
    [
        # one window [0, 10) fires its two events on time; at 19 the empty window [10, 20) fires the default
        ([(1, 1.0), (5, 1.0), (30, 1.0)], 9, {0: (2.0, 10, 0)}),
        ([(1, 1.0), (5, 1.0), (30, 1.0)], 19, {0: (-1.0, 20, 0)}),
        # a late event within allowed lateness re-fires [0, 10) with firing 1 ...
        ([(1, 1.0), (14, 1.0), (3, 1.0)], 14, {0: (2.0, 10, 1)}),
        # ... unless it arrived once the watermark (13) had reached until: it is after the cut
        ([(1, 1.0), (14, 1.0), (3, 1.0)], 13, {0: (1.0, 10, 0)}),
        # [10, 20), armed by [0, 10), fired the default at watermark 23; its first event re-fires it (firing 1)
        ([(1, 1.0), (24, 1.0), (12, 1.0)], 24, {0: (1.0, 20, 1)}),
        # without an event in [0, 10) nothing armed it: the late event's firing is the window's first
        ([(24, 1.0), (12, 1.0)], 24, {0: (1.0, 20, 0)}),
    ],
)
def test_column_table(
    arrivals: list[tuple[int, float]], until_ms: int, expected: dict[int, tuple[float, int, int]]
) -> None:
    feature = WindowedAggregate(WindowSpec(10), "count", allowed_lateness_ms=5, default=-1.0)
    stream = [(t, 0, v) for t, v in arrivals]
    result = final_column(feature, columns_of(feature, stream, 0, until_ms), until_ms)
    got = {int(i): (float(v), int(ver) >> 20, int(ver) & 0xFFFFF)
           for i, v, ver in zip(result.column.item_ids, result.column.values, result.column.versions, strict=True)}  # fmt: skip
    assert got == expected
    assert math.isfinite(sum(result.column.values))
