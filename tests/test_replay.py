"""Replaying a keyed stream: checked against a brute-force oracle that shares no code with the operator.

The oracle judges every event against the watermark current when it arrived, straight from the
rules in ``freshet.windows``' docstring, and recomputes each window's firings from the raw events
with plain ``len``/``math.fsum``/``min``/``max``/``set``, plus the default firing of an empty window
from when its previous window first fired with events.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshet.aggregators import Aggregation, Value
from freshet.replay import FinalValue, StreamReplay, evaluate, final_values, latest_per_key
from freshet.spec import load_feature_set
from freshet.watermarks import watermarks_after_each
from freshet.windows import (
    END_OF_STREAM,
    NO_WATERMARK,
    Dropped,
    Fire,
    Late,
    LatePolicy,
    Output,
    WindowedAggregate,
    WindowSpec,
    version_for,
)

Event = tuple[int, str, Value]
FEATURE_DEFS = Path(__file__).parent.parent / "feature_defs"


def brute(aggregation: Aggregation, events: list[Event]) -> float:
    values = [float(v) for _, _, v in events]
    if aggregation == "count":
        return float(len(values))
    if aggregation == "sum":
        return math.fsum(values)
    if aggregation == "mean":
        return math.fsum(values) / len(values)
    if aggregation == "min":
        return min(values)
    if aggregation == "max":
        return max(values)
    if aggregation == "last":
        return max((ts, float(v)) for ts, _, v in events)[1]
    return float(len(set(values)))


def windows_holding(spec: WindowSpec, ts_ms: int) -> list[tuple[int, int]]:
    step = spec.step_ms
    return [(s, s + spec.size_ms) for s in range(ts_ms - spec.size_ms - step, ts_ms + 1) if s % step == 0
            and s <= ts_ms < s + spec.size_ms]  # fmt: skip


Moment = tuple[int, int]
"""When something happens: ``(i, 0)`` is event ``i`` arriving, ``(i, 1)`` the watermark after it."""


def oracle(
    events: list[Event], watermarks: list[int], feature: WindowedAggregate, end_watermark_ms: int | None
) -> tuple[dict[tuple[str, int], list[tuple[float, int]]], dict[str, list[tuple[str, int]]]]:
    """Per (item, window end): the firings (value, firing); per item: the too-late events, in order.

    Each window's firings are derived from its events and from when the previous window first
    fired with events (which arms an empty window to fire the default), oldest window first.
    """
    lateness, step = feature.allowed_lateness_ms, feature.window.step_ms
    before = list(itertools.accumulate([NO_WATERMARK, *watermarks], max))[: len(events)]
    marks = [*watermarks, *([end_watermark_ms] if end_watermark_ms is not None else [])]
    reached = list(itertools.accumulate(marks, max))  # the watermark at each moment (i, 1)
    joined: dict[tuple[str, int], list[tuple[Moment, Event]]] = defaultdict(list)
    too_late: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for i, (event, w) in enumerate(zip(events, before, strict=True)):
        ts, key, _ = event
        ends = [end for _, end in windows_holding(feature.window, ts) if end - 1 + lateness > w]
        for end in ends:
            joined[key, end].append(((i, 0), event))
        if not ends:
            too_late[key].append(("late" if feature.late_policy == "side_output" else "drop", ts))

    def due(end: int) -> Moment | None:  # the first moment the watermark is at end - 1 or beyond
        return next(((i, 1) for i, w in enumerate(reached) if w >= end - 1), None)

    # every window with events, and each one's next window, the only one its firings can arm
    windows = sorted({(key, end + d) for key, end in joined for d in (0, step)}, key=lambda kw: kw[::-1])
    firings: dict[tuple[str, int], list[tuple[Moment, float, bool]]] = {}  # (when, value, with events)
    for key, end in windows:
        at = due(end)
        on_time = [e for m, e in joined[key, end] if at is None or m < at]
        late = [(m, e) for m, e in joined[key, end] if at is not None and m > at]
        seq: list[tuple[Moment, float, bool]] = []
        if on_time and at is not None:
            seq.append((at, brute(feature.aggregation, on_time), True))
        armed_at = next((m for m, _, with_events in firings.get((key, end - step), []) if with_events), None)
        if not on_time and armed_at is not None and at is not None:
            empty_at = max(armed_at, at)
            if not late or empty_at < late[0][0]:  # an event joining at the same moment comes first
                seq.append((empty_at, feature.default, False))
        for k, (m, _) in enumerate(late):
            seq.append((m, brute(feature.aggregation, on_time + [e for _, e in late[: k + 1]]), True))
        firings[key, end] = seq
    fires = {kw: [(value, n) for n, (_, value, _) in enumerate(seq)] for kw, seq in firings.items() if seq}
    return fires, dict(too_late)


def observed(
    outputs: list[tuple[str, Output]],
) -> tuple[dict[tuple[str, int], list[tuple[float, int]]], dict[str, list[tuple[str, int]]]]:
    fires: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    too_late: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for key, out in outputs:
        if isinstance(out, Fire):
            fires[key, out.window_end_ms].append((out.value, out.firing))
        else:
            too_late[key].append(("late" if isinstance(out, Late) else "drop", out.event_ts_ms))
    return dict(fires), dict(too_late)


AGGREGATIONS: list[Aggregation] = ["count", "sum", "mean", "min", "max", "last", "approx_distinct"]
POLICIES: list[LatePolicy] = ["update", "side_output", "drop"]

specs = st.one_of(
    st.builds(WindowSpec, st.integers(1, 30)),
    st.integers(1, 30).flatmap(lambda size: st.builds(WindowSpec, st.just(size), st.integers(1, size))),
)
features = st.builds(
    WindowedAggregate,
    specs,
    st.sampled_from(AGGREGATIONS),
    allowed_lateness_ms=st.integers(0, 25),
    late_policy=st.sampled_from(POLICIES),
    default=st.sampled_from([0.0, -1.5]),
)
events_st = st.lists(
    st.tuples(st.integers(0, 200), st.sampled_from("abc"), st.integers(-5, 5).map(float)), max_size=60
)
end_watermarks = st.one_of(st.none(), st.just(END_OF_STREAM), st.integers(-10, 260))


@given(feature=features, events=events_st, bound_ms=st.integers(0, 40), end_watermark_ms=end_watermarks)
@settings(max_examples=300, deadline=None)
def test_replay_matches_the_oracle_with_bounded_out_of_orderness_watermarks(
    feature: WindowedAggregate, events: list[Event], bound_ms: int, end_watermark_ms: int | None
) -> None:
    marks = watermarks_after_each([ts for ts, _, _ in events], bound_ms)
    got = evaluate(events, feature, max_out_of_orderness_ms=bound_ms, end_watermark_ms=end_watermark_ms)
    assert observed(got) == oracle(events, marks, feature, end_watermark_ms)


@given(feature=features, events=events_st, steps=st.lists(st.integers(-20, 30), max_size=60))
@settings(max_examples=200, deadline=None)
def test_replay_matches_the_oracle_with_any_watermarks(
    feature: WindowedAggregate, events: list[Event], steps: list[int]
) -> None:
    # watermarks that stall, jump, or even step back (a step back is ignored, as Flink ignores it)
    marks = list(itertools.accumulate((steps + [0] * len(events))[: len(events)], initial=-15))[1:]
    got = evaluate(events, feature, watermarks=marks, end_watermark_ms=END_OF_STREAM)
    assert observed(got) == oracle(events, marks, feature, END_OF_STREAM)


@given(
    feature=features.filter(lambda f: f.allowed_lateness_ms == 0),
    events=events_st,
    bound_ms=st.integers(0, 40),
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_shuffling_within_the_bound_changes_no_firing(
    feature: WindowedAggregate, events: list[Event], bound_ms: int, data: st.DataObject
) -> None:
    in_order = sorted(events, key=lambda e: e[0])
    jitter = data.draw(st.lists(st.integers(0, bound_ms), min_size=len(events), max_size=len(events)))
    shuffled = [e for _, e in sorted(zip(jitter, in_order, strict=True), key=lambda je: je[1][0] + je[0])]

    def fires(stream: list[Event]) -> list[tuple[str, Output]]:
        out = evaluate(stream, feature, max_out_of_orderness_ms=bound_ms, end_watermark_ms=END_OF_STREAM)
        assert all(isinstance(o, Fire) for _, o in out), "no event is late inside the bound"
        return out

    got, expected = fires(shuffled), fires(in_order)
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert final_values(got) == final_values(expected)


@given(feature=features, events=events_st, bound_ms=st.integers(0, 40))
@settings(max_examples=100, deadline=None)
def test_every_window_state_is_gone_once_the_stream_ends(
    feature: WindowedAggregate, events: list[Event], bound_ms: int
) -> None:
    replay: StreamReplay[str] = StreamReplay(feature)
    for (ts, key, value), mark in zip(
        events, watermarks_after_each([e[0] for e in events], bound_ms), strict=True
    ):
        replay.on_event(ts, key, value)
        replay.advance(mark)
    replay.advance(END_OF_STREAM)
    assert replay.states == {}


def test_outputs_of_one_item_keep_the_stream_order() -> None:
    feature = WindowedAggregate(WindowSpec(10), "sum", allowed_lateness_ms=10, late_policy="side_output")
    events: list[Event] = [
        (1, "x", 1.0),
        (2, "y", 5.0),
        (15, "x", 2.0),
        (3, "x", 4.0),
        (40, "y", 1.0),
        (5, "x", 8.0),
    ]
    got = evaluate(events, feature, max_out_of_orderness_ms=0)
    assert got == [
        ("x", Fire(0, 10, 1.0, 0, 9)),
        ("y", Fire(0, 10, 5.0, 0, 9)),
        ("x", Fire(0, 10, 5.0, 1, 9)),
        ("x", Fire(10, 20, 2.0, 0, 19)),
        ("x", Fire(20, 30, 0.0, 0, 29)),  # x's empty window after its last, in the same advance
        ("y", Fire(10, 20, 0.0, 0, 19)),
        ("x", Late("late: window [0,10) closed at watermark 39", 5, 8.0, 39)),
    ]


def test_an_idle_item_falls_back_to_the_default_once_its_window_is_empty() -> None:
    likes_1h = next(f for f in load_feature_set(FEATURE_DEFS).features if f.name == "likes_1h")
    feature = WindowedAggregate.from_feature(likes_1h)  # sliding 1h every 5m, default 0
    hour, t0 = 3_600_000, 1_700_000_000_000
    burst: list[Event] = [(t0 + i, "liked", 1.0) for i in range(50)]
    other: list[Event] = [(t0 + k * 60_000, "busy", 1.0) for k in range(1, 150)]  # moves the watermark
    got = evaluate(burst + other, feature, max_out_of_orderness_ms=0)
    armed_end = max(end for _, end in feature.window.windows_for(t0 + 49)) + feature.window.step_ms
    liked = [out for key, out in got if key == "liked" and isinstance(out, Fire)]
    assert len(liked) == sum(key == "liked" for key, _ in got)
    assert [out.value for out in liked] == [50.0] * (hour // feature.window.step_ms) + [0.0]
    assert liked[-1] == Fire(armed_end - hour, armed_end, 0.0, 0, armed_end - 1)
    assert final_values(got)["liked"] == FinalValue(0.0, version_for(liked[-1]))


def test_final_values_keep_the_highest_version() -> None:
    outputs: list[tuple[str, Output]] = [
        ("x", Fire(0, 10, 1.0, 0, 9)),
        ("x", Fire(10, 20, 7.0, 0, 19)),
        ("x", Fire(0, 10, 2.0, 1, 9)),  # a late re-fire of an older window does not win
        ("y", Fire(0, 10, 3.0, 0, 9)),
        ("y", Fire(0, 10, 4.0, 1, 9)),
        ("y", Dropped("late", 3, 30)),
    ]
    assert final_values(outputs) == {
        "x": FinalValue(7.0, version_for(Fire(10, 20, 7.0, 0, 19))),
        "y": FinalValue(4.0, 10 << 20 | 1),
    }


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1 << 40), st.floats(-1, 1)), max_size=50))
def test_latest_per_key_agrees_with_a_loop(rows: list[tuple[int, int, float]]) -> None:
    rows = list({(k, ver): (k, ver, val) for k, ver, val in rows}.values())  # versions are unique per key
    keys, versions, values = (
        (np.array(col) for col in zip(*rows, strict=True)) if rows else (np.array([]),) * 3
    )
    k, ver, val = latest_per_key(keys, versions, values)
    expected: dict[int, tuple[int, float]] = {}
    for key, version, value in rows:
        if key not in expected or version > expected[key][0]:
            expected[key] = (version, value)
    assert {int(a): (int(b), float(c)) for a, b, c in zip(k, ver, val, strict=True)} == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give either the watermarks or max_out_of_orderness_ms"),
        ({"watermarks": [1, 2, 3]}, "3 watermarks for 2 events; give one after each event"),
    ],
)
def test_evaluate_needs_one_watermark_per_event(kwargs: dict[str, Any], message: str) -> None:
    feature = WindowedAggregate(WindowSpec(10), "count")
    with pytest.raises(ValueError, match=message):
        evaluate([(1, "a", 1.0), (2, "a", 1.0)], feature, **kwargs)
