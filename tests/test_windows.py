"""Window assignment and the per-item window operator: the semantics the Flink job must reproduce.

Scenarios are tables of steps — ``("event", ts_ms, watermark_ms)`` (an event of value 1.0 arriving
while the watermark is ``watermark_ms``) or ``("wm", watermark_ms)`` — and the outputs expected, in
a compact form: ``("fire", start, end, value, firing)``, ``("late", ts_ms)``, ``("drop", ts_ms)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from freshet.aggregators import AGGREGATORS, Value
from freshet.spec import load_feature_set
from freshet.windows import (
    END_OF_STREAM,
    NO_WATERMARK,
    Dropped,
    Fire,
    Late,
    LatePolicy,
    Output,
    WindowedAggregate,
    WindowOperator,
    WindowSpec,
    WindowState,
    version_for,
)

FEATURE_DEFS = Path(__file__).parent.parent / "feature_defs"
TUMBLING = WindowSpec(10)
SLIDING = WindowSpec(20, slide_ms=10)

Step = tuple[Any, ...]


def compact(out: Output) -> tuple[Any, ...]:
    if isinstance(out, Fire):
        assert out.event_time_ms == out.window_end_ms - 1
        return ("fire", out.window_start_ms, out.window_end_ms, out.value, out.firing)
    if isinstance(out, Late):
        return ("late", out.event_ts_ms)
    return ("drop", out.event_ts_ms)


def run(
    feature: WindowedAggregate, steps: list[Step], state: WindowState | None = None
) -> tuple[WindowState, list[tuple[Any, ...]]]:
    op = WindowOperator(feature)
    state = op.initial_state() if state is None else state
    outputs: list[Output] = []
    for step in steps:
        if step[0] == "event":
            _, ts_ms, watermark_ms, *value = step
            state, outs = op.on_event(state, ts_ms, value[0] if value else 1.0, watermark_ms)
        else:
            state, outs = op.on_watermark(state, step[1])
        outputs += outs
    return state, [compact(o) for o in outputs]


# ---------------------------------------------------------------- assignment


@pytest.mark.parametrize(
    ("spec", "ts_ms", "expected"),
    [
        (TUMBLING, 0, [(0, 10)]),
        (TUMBLING, 9, [(0, 10)]),  # end - 1 is inside
        (TUMBLING, 10, [(10, 20)]),  # end is not
        (TUMBLING, -1, [(-10, 0)]),  # aligned to epoch 0 below it too
        (SLIDING, 0, [(-10, 10), (0, 20)]),
        (SLIDING, 9, [(-10, 10), (0, 20)]),
        (SLIDING, 10, [(0, 20), (10, 30)]),
        (WindowSpec(10, slide_ms=10), 15, [(10, 20)]),  # slide == size is tumbling
        (WindowSpec(25, slide_ms=10), 25, [(10, 35), (20, 45)]),  # slide need not divide size
        (WindowSpec(25, slide_ms=10), 24, [(0, 25), (10, 35), (20, 45)]),
        (WindowSpec(3_600_000, slide_ms=300_000), 1_700_000_000_123, None),
    ],
)
def test_windows_for(spec: WindowSpec, ts_ms: int, expected: list[tuple[int, int]] | None) -> None:
    got = spec.windows_for(ts_ms)
    if expected is not None:
        assert got == expected
    assert len(got) == len(set(got))
    assert all(s <= ts_ms < e and e - s == spec.size_ms and s % spec.step_ms == 0 for s, e in got)


@given(size=st.integers(1, 50), slide=st.integers(1, 50), ts_ms=st.integers(-1_000, 1_000))
def test_windows_for_is_every_aligned_window_holding_the_event(size: int, slide: int, ts_ms: int) -> None:
    spec = WindowSpec(size, slide_ms=min(slide, size))
    step = spec.step_ms
    brute = [(s, s + size) for s in range(-3_000, 3_000) if s % step == 0 and s <= ts_ms < s + size]
    assert spec.windows_for(ts_ms) == brute


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: WindowSpec(0), "window size must be positive"),
        (lambda: WindowSpec(10, slide_ms=0), r"window slide must be in \(0, size=10\]"),
        (lambda: WindowSpec(10, slide_ms=11), r"window slide must be in \(0, size=10\]"),
        (lambda: WindowedAggregate(TUMBLING, "median"), "unknown aggregation 'median'"),  # type: ignore[arg-type]
        (
            lambda: WindowedAggregate(TUMBLING, "count", allowed_lateness_ms=-1),
            "allowed lateness must be >= 0",
        ),
        (lambda: WindowedAggregate(TUMBLING, "count", late_policy="keep"), "late policy must be one of"),  # type: ignore[arg-type]
        (
            lambda: WindowedAggregate(TUMBLING, "count", default=float("nan")),
            "default must be a finite number",
        ),
    ],
)
def test_invalid_parameters_are_refused(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------- firing, lateness, policies

count10 = WindowedAggregate(TUMBLING, "count")  # [0, 10): max_ts 9; no allowed lateness


def lateness(policy: LatePolicy, lateness_ms: int = 5, spec: WindowSpec = TUMBLING) -> WindowedAggregate:
    return WindowedAggregate(spec, "count", allowed_lateness_ms=lateness_ms, late_policy=policy)


FIRE_0 = ("fire", 0, 10, 1.0, 0)
EMPTY_1 = ("fire", 10, 20, 0.0, 0)  # the window after [0, 10), armed by its firing, with no events

SCENARIOS: list[tuple[str, WindowedAggregate, list[Step], list[tuple[Any, ...]]]] = [
    # -- on time: a window fires once, when the watermark reaches end - 1
    ("no fire before end-1", count10, [("event", 3, NO_WATERMARK), ("wm", 8)], []),
    ("fires at exactly end-1", count10, [("event", 3, NO_WATERMARK), ("wm", 9)], [FIRE_0]),
    (
        "fires once",
        count10,
        [("event", 3, NO_WATERMARK), ("wm", 9), ("wm", 10), ("wm", 500)],
        [FIRE_0, EMPTY_1],
    ),
    ("late watermark fires too", count10, [("event", 3, NO_WATERMARK), ("wm", 1_000)], [FIRE_0, EMPTY_1]),
    (
        "events before end-1 all count",
        count10,
        [("event", 3, NO_WATERMARK), ("event", 9, 8), ("event", 0, 8), ("wm", 9)],
        [("fire", 0, 10, 3.0, 0)],
    ),
    (
        "event at end belongs to the next window",
        count10,
        [("event", 3, NO_WATERMARK), ("event", 10, 8), ("wm", 19)],
        [FIRE_0, ("fire", 10, 20, 1.0, 0)],
    ),
    (
        "a watermark passing two windows fires both, oldest first",
        count10,
        [("event", 13, NO_WATERMARK), ("event", 3, NO_WATERMARK), ("wm", 25)],
        [FIRE_0, ("fire", 10, 20, 1.0, 0)],
    ),
    # -- no allowed lateness: an event after end-1 is too late, under every policy's rule
    ("L=0: event at W=end-2 joins", count10, [("event", 9, 8), ("wm", 9)], [FIRE_0]),
    ("L=0 side_output: event at W=end-1", lateness("side_output", 0), [("event", 9, 9)], [("late", 9)]),
    ("L=0 drop: event at W=end-1", lateness("drop", 0), [("event", 9, 9)], [("drop", 9)]),
    ("L=0 update: event at W=end-1", lateness("update", 0), [("event", 9, 9)], [("drop", 9)]),
    (
        "L=0: too late after firing",
        lateness("side_output", 0),
        [("event", 3, NO_WATERMARK), ("wm", 9), ("event", 4, 9)],
        [FIRE_0, ("late", 4)],
    ),
    # -- within allowed lateness (W in [end-1, end-1+L)): join and re-fire at once, every policy
    *[
        (
            f"{policy}: late at W={w} re-fires",
            lateness(policy),
            [("event", 3, NO_WATERMARK), ("wm", 9), ("event", 4, w)],
            [FIRE_0, ("fire", 0, 10, 2.0, 1)],
        )
        for policy in ("update", "side_output", "drop")
        for w in (9, 13)  # end-1 and end-1+L-1
    ],
    (
        "every late event re-fires with the next firing number",
        lateness("update"),
        [("event", 3, NO_WATERMARK), ("wm", 9), ("event", 4, 9), ("event", 5, 11), ("event", 0, 13)],
        [FIRE_0, ("fire", 0, 10, 2.0, 1), ("fire", 0, 10, 3.0, 2), ("fire", 0, 10, 4.0, 3)],
    ),
    (
        "a window's first event may be late: it fires at once, firing 0",
        lateness("update"),
        [("event", 4, 12)],
        [("fire", 0, 10, 1.0, 0)],
    ),
    (
        "late refire then the watermark passes end-1+L: no further fire",
        lateness("update"),
        [("event", 3, NO_WATERMARK), ("event", 4, 9), ("wm", 14), ("wm", 100)],
        [FIRE_0, ("fire", 0, 10, 2.0, 1), EMPTY_1],
    ),
    # -- too late (W >= end-1+L): the policy decides
    ("update: too late at W=end-1+L", lateness("update"), [("event", 3, 14)], [("drop", 3)]),
    ("drop: too late at W=end-1+L", lateness("drop"), [("event", 3, 14)], [("drop", 3)]),
    ("side_output: too late at W=end-1+L", lateness("side_output"), [("event", 3, 14)], [("late", 3)]),
    (
        "side_output: too late after firings",
        lateness("side_output"),
        [("event", 3, NO_WATERMARK), ("wm", 9), ("event", 4, 13), ("event", 5, 14)],
        [FIRE_0, ("fire", 0, 10, 2.0, 1), ("late", 5)],
    ),
    # -- sliding windows [s, s+20) every 10: an event is in two windows
    (
        "sliding: on time in both windows",
        lateness("update", 0, SLIDING),
        [("event", 15, NO_WATERMARK), ("wm", 19), ("wm", 29)],
        [("fire", 0, 20, 1.0, 0), ("fire", 10, 30, 1.0, 0)],
    ),
    (
        "sliding: too late for the older window only joins the newer, no late output",
        lateness("side_output", 0, SLIDING),
        [("event", 15, 19), ("wm", 29)],
        [("fire", 10, 30, 1.0, 0)],
    ),
    (
        "sliding: too late for both windows, the reason names the newer",
        lateness("side_output", 0, SLIDING),
        [("event", 15, 29)],
        [("late", 15)],
    ),
    (
        "sliding: late for the older window re-fires it, on time for the newer",
        lateness("update", 5, SLIDING),
        [("event", 12, NO_WATERMARK), ("wm", 19), ("event", 15, 20), ("wm", 29)],
        [("fire", 0, 20, 1.0, 0), ("fire", 0, 20, 2.0, 1), ("fire", 10, 30, 2.0, 0)],
    ),
    # -- on_event applies its watermark first, so a window due is fired before the event counts
    (
        "on_event catches up with its watermark",
        count10,
        [("event", 3, NO_WATERMARK), ("event", 12, 9), ("wm", 19)],
        [FIRE_0, ("fire", 10, 20, 1.0, 0)],
    ),
    # -- empty windows: a firing with events arms the next window, which fires the default if empty
    (
        "tumbling gap: one default firing, then silence",
        count10,
        [("event", 3, NO_WATERMARK), ("wm", 9), ("wm", 18), ("wm", 19), ("wm", 29), ("wm", 1_000)],
        [FIRE_0, EMPTY_1],
    ),
    (
        "a watermark jumping the gap fires the window and its empty next at once",
        count10,
        [("event", 3, NO_WATERMARK), ("wm", END_OF_STREAM)],
        [FIRE_0, EMPTY_1],
    ),
    (
        "the empty window fires the declared default, not the empty aggregate",
        WindowedAggregate(TUMBLING, "mean", default=7.0),
        [("event", 3, NO_WATERMARK, 2.0), ("wm", 100)],
        [("fire", 0, 10, 2.0, 0), ("fire", 10, 20, 7.0, 0)],
    ),
    (
        "sliding gap: the window after the event's newest fires the default once",
        lateness("update", 0, SLIDING),
        [("event", 15, NO_WATERMARK), ("wm", 19), ("wm", 29), ("wm", 39), ("wm", 49), ("wm", 1_000)],
        [("fire", 0, 20, 1.0, 0), ("fire", 10, 30, 1.0, 0), ("fire", 20, 40, 0.0, 0)],
    ),
    (
        "an event just before the armed window fires makes it fire its value",
        count10,
        [("event", 3, NO_WATERMARK), ("wm", 9), ("event", 19, 18), ("wm", 19), ("wm", 29), ("wm", 39)],
        [FIRE_0, ("fire", 10, 20, 1.0, 0), ("fire", 20, 30, 0.0, 0)],
    ),
    (
        "sliding: an event just before the armed window fires makes it fire its value",
        lateness("update", 0, SLIDING),
        [("event", 15, NO_WATERMARK), ("wm", 29), ("event", 38, 38), ("wm", 39), ("wm", 49), ("wm", 59)],
        [
            ("fire", 0, 20, 1.0, 0),
            ("fire", 10, 30, 1.0, 0),
            ("fire", 20, 40, 1.0, 0),
            ("fire", 30, 50, 1.0, 0),
            ("fire", 40, 60, 0.0, 0),
        ],
    ),
    (
        "a late event into an empty-fired window re-fires it with firing 1",
        lateness("update"),
        [("event", 3, NO_WATERMARK), ("wm", 19), ("event", 12, 20), ("wm", 29), ("wm", 100)],
        [FIRE_0, EMPTY_1, ("fire", 10, 20, 1.0, 1), ("fire", 20, 30, 0.0, 0)],
    ),
    (
        "a late re-fire arms the next window, which fires at once when already due",
        lateness("update", 15),
        [("event", 3, NO_WATERMARK), ("wm", 29), ("event", 12, 29), ("wm", 100)],
        [FIRE_0, EMPTY_1, ("fire", 10, 20, 1.0, 1), ("fire", 20, 30, 0.0, 0)],
    ),
    (
        "an idle item's late first event is followed by the default of the next window",
        lateness("update", 15),
        [("event", 4, 20), ("wm", 100)],
        [("fire", 0, 10, 1.0, 0), EMPTY_1],
    ),
    (
        "sliding: an event joining the window it arms fires its value, no default first",
        lateness("update", 15, SLIDING),
        [("event", 25, 41), ("wm", 49), ("wm", 100)],
        [("fire", 10, 30, 1.0, 0), ("fire", 20, 40, 1.0, 0), ("fire", 30, 50, 0.0, 0)],
    ),
    (
        "a late event into the window before an empty-fired one re-fires only that window",
        lateness("update", 25),
        [("event", 3, NO_WATERMARK), ("wm", 19), ("event", 5, 30), ("wm", 100)],
        [FIRE_0, EMPTY_1, ("fire", 0, 10, 2.0, 1)],
    ),
    (
        "too late events arm nothing",
        lateness("side_output", 0),
        [("event", 3, 9), ("wm", 100)],
        [("late", 3)],
    ),
]


@pytest.mark.parametrize(
    ("feature", "steps", "expected"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_semantics(feature: WindowedAggregate, steps: list[Step], expected: list[tuple[Any, ...]]) -> None:
    _, got = run(feature, steps)
    assert got == expected


def test_late_reason_names_window_and_watermark() -> None:
    op = WindowOperator(lateness("side_output", 5))
    _, outs = op.on_event({}, 3, 42.0, 20)
    assert outs == [Late("late: window [0,10) closed at watermark 20", 3, 42.0, 20)]
    op = WindowOperator(lateness("drop", 5))
    assert op.on_event({}, 3, 42.0, 20)[1] == [Dropped("late: window [0,10) closed at watermark 20", 3, 20)]
    op = WindowOperator(lateness("side_output", 0, SLIDING))  # the newest of its windows closed last
    assert op.on_event({}, 15, 1.0, 29)[1] == [
        Late("late: window [10,30) closed at watermark 29", 15, 1.0, 29)
    ]


EVENTS: list[tuple[int, Value]] = [(3, 2.0), (5, 7.0), (1, -1.0), (5, 4.0)]
EXPECTED = {
    "count": 4.0,
    "sum": 12.0,
    "mean": 3.0,
    "min": -1.0,
    "max": 7.0,
    "last": 7.0,  # greatest time 5; among equal times the greatest value
    "approx_distinct": 4.0,
}
assert set(EXPECTED) == set(AGGREGATORS)


@pytest.mark.parametrize("aggregation", sorted(EXPECTED))
def test_each_aggregation_fires_its_value(aggregation: str) -> None:
    feature = WindowedAggregate(TUMBLING, aggregation, allowed_lateness_ms=5)  # type: ignore[arg-type]
    steps: list[Step] = [("event", ts, NO_WATERMARK, v) for ts, v in EVENTS[:3]]
    steps += [("wm", 9), ("event", *EVENTS[3][:1], 9, EVENTS[3][1])]
    _, got = run(feature, steps)
    agg = AGGREGATORS[aggregation]
    on_time = agg.result(_fold(aggregation, EVENTS[:3]))
    assert got == [("fire", 0, 10, on_time, 0), ("fire", 0, 10, EXPECTED[aggregation], 1)]


def _fold(aggregation: str, events: list[tuple[int, Value]]) -> Any:
    agg = AGGREGATORS[aggregation]
    acc = agg.initial()
    for ts, v in events:
        acc = agg.add(acc, v, ts)
    return acc


# ---------------------------------------------------------------- state


@pytest.mark.parametrize("lateness_ms", [0, 1, 5])
@pytest.mark.parametrize("spec", [TUMBLING, SLIDING], ids=["tumbling", "sliding"])
def test_state_is_cleared_when_the_watermark_reaches_end_minus_1_plus_lateness(
    spec: WindowSpec, lateness_ms: int
) -> None:
    feature = lateness("update", lateness_ms, spec)
    state, _ = run(feature, [("event", 15, NO_WATERMARK)])
    last_end = max(state)
    armed_end = last_end + spec.step_ms  # the empty window the last firing arms
    assert len(state) == len(spec.windows_for(15))
    before, _ = run(feature, [("wm", last_end - 1 + lateness_ms - 1)], state)
    assert last_end in before
    after, _ = run(feature, [("wm", last_end - 1 + lateness_ms)], state)
    assert list(after) == [armed_end]
    assert run(feature, [("wm", armed_end - 1 + lateness_ms - 1)], state)[0] != {}
    assert run(feature, [("wm", armed_end - 1 + lateness_ms)], state)[0] == {}


def test_state_stays_bounded_over_a_long_stream() -> None:
    op = WindowOperator(lateness("update", 25, SLIDING))
    state, peak = op.initial_state(), 0
    for ts in range(0, 10_000, 3):
        state, _ = op.on_event(state, ts, 1.0, ts - 7)
        peak = max(peak, len(state))
    # windows open: those still within end-1+L of the watermark, plus the ones the newest event is in
    assert peak <= (SLIDING.size_ms + 25 + 7) // SLIDING.step_ms + 1
    assert op.on_watermark(state, END_OF_STREAM)[0] == {}


@pytest.mark.parametrize("watermark_ms", [NO_WATERMARK, 29, 31, 39])  # before, at, past the arming
def test_the_state_passed_in_is_never_changed(watermark_ms: int) -> None:
    op = WindowOperator(lateness("update", 5, SLIDING))
    state, _ = op.on_event({}, 15, 1.0, NO_WATERMARK)
    state, _ = op.on_watermark(state, watermark_ms)
    snapshot = dict(state)
    op.on_event(state, 16, 1.0, max(watermark_ms, 19))
    op.on_event(state, 35, 1.0, max(watermark_ms, 19))
    op.on_event(state, 31, 1.0, max(watermark_ms, 39))
    op.on_watermark(state, 100)
    op.on_watermark(state, END_OF_STREAM)
    assert state == snapshot


@pytest.mark.parametrize("lateness_ms", [0, 5, 25])
@pytest.mark.parametrize("spec", [TUMBLING, SLIDING], ids=["tumbling", "sliding"])
@pytest.mark.parametrize(
    "steps",
    [
        [("event", 15, NO_WATERMARK)],
        [("event", 15, NO_WATERMARK), ("wm", 29)],  # armed
        [("event", 15, NO_WATERMARK), ("wm", 39)],  # empty-fired
        [("event", 15, NO_WATERMARK), ("wm", 39), ("event", 31, 39)],  # late into the empty-fired one
    ],
    ids=["open", "armed", "empty-fired", "late-into-empty"],
)
def test_end_of_stream_fires_everything_and_leaves_no_state(
    spec: WindowSpec, lateness_ms: int, steps: list[Step]
) -> None:
    feature = lateness("update", lateness_ms, spec)
    state, before = run(feature, steps)
    after, at_end = run(feature, [("wm", END_OF_STREAM)], state)
    assert after == {}
    assert WindowOperator(feature).due_times_ms(after) == []
    newest = max((o for o in before + at_end if o[0] == "fire"), key=lambda o: (o[2], o[4]))
    assert newest[3] == 0.0  # the column ends at the default (a count of 0 only comes from it)
    assert sum(o[3] == 0.0 for o in at_end) <= 1


def test_nothing_to_do_returns_the_same_state() -> None:
    op = WindowOperator(count10)
    state, _ = op.on_event({}, 3, 1.0, NO_WATERMARK)
    assert op.on_watermark(state, 5) == (state, [])


def test_due_times_include_the_window_a_firing_will_arm() -> None:
    op = WindowOperator(lateness("update", 5, SLIDING))
    state, _ = op.on_event({}, 15, 1.0, NO_WATERMARK)
    assert op.due_times_ms(state) == [19, 24, 29, 34, 39, 44]  # [30, 40) is armed by [10, 30)'s firing


@pytest.mark.parametrize("lateness_ms", [0, 5, 25])
@pytest.mark.parametrize("spec", [TUMBLING, SLIDING], ids=["tumbling", "sliding"])
@pytest.mark.parametrize(
    "steps",
    [
        [("event", 15, NO_WATERMARK)],
        [("event", 15, NO_WATERMARK), ("event", 3, NO_WATERMARK)],
        [("event", 15, NO_WATERMARK), ("wm", 29)],
        [("event", 15, NO_WATERMARK), ("wm", 39)],
        [("event", 15, NO_WATERMARK), ("wm", 39), ("event", 31, 39)],
        [("event", 4, 20)],
    ],
)
def test_due_times_are_exactly_where_on_watermark_acts(
    spec: WindowSpec, lateness_ms: int, steps: list[Step]
) -> None:
    op = WindowOperator(lateness("update", lateness_ms, spec))
    state, _ = run(op.feature, steps)
    acts = [w for w in range(-1, 200) if op.on_watermark(state, w) != op.on_watermark(state, w - 1)]
    assert op.due_times_ms(state) == acts


# ---------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("end", "firing", "expected"),
    [
        (0, 0, 0),
        (10, 0, 10 << 20),
        (10, 1, (10 << 20) + 1),
        (10, (1 << 20) - 1, (11 << 20) - 1),
        (1_700_000_000_000, 2, 1_700_000_000_000 * 2**20 + 2),
    ],
)
def test_version_for(end: int, firing: int, expected: int) -> None:
    assert version_for(Fire(end - 10, end, 0.0, firing, end - 1)) == expected


def test_version_for_refuses_a_firing_beyond_twenty_bits() -> None:
    with pytest.raises(ValueError, match=r"sequence 1048576 outside \[0, 1048575\]"):
        version_for(Fire(0, 10, 0.0, 1 << 20, 9))


def test_every_refire_has_a_higher_version_and_later_windows_win() -> None:
    _, outs = run(
        lateness("update", 50),
        [
            ("event", 3, NO_WATERMARK),
            ("wm", 9),
            ("event", 4, 9),
            ("event", 12, 9),
            ("wm", 19),
            ("event", 5, 20),
        ],
    )
    fires = [Fire(o[1], o[2], o[3], o[4], o[2] - 1) for o in outs]
    versions = [version_for(f) for f in fires]
    by_window: dict[int, list[int]] = {}
    for f, v in zip(fires, versions, strict=True):
        by_window.setdefault(f.window_end_ms, []).append(v)
    assert all(vs == sorted(vs) and len(set(vs)) == len(vs) for vs in by_window.values())
    assert min(by_window[20]) > max(by_window[10])


# ---------------------------------------------------------------- from the feature definitions


def test_from_feature_reads_the_declared_window_semantics() -> None:
    features = load_feature_set(FEATURE_DEFS)
    got = {f.name: WindowedAggregate.from_feature(f) for f in features.features}
    assert got["likes_1h"] == WindowedAggregate(WindowSpec(3_600_000, 300_000), "count", 60_000, "update")
    assert got["views_10m"] == WindowedAggregate(WindowSpec(600_000), "count", 30_000, "side_output")
    assert got["unique_likers_1d"].aggregation == "approx_distinct"
    assert got["dwell_max_1h"] == WindowedAggregate(WindowSpec(3_600_000), "max", 0, "drop")
    assert all(got[f.name].default == f.default for f in features.features)


def test_from_feature_takes_the_declared_default() -> None:
    feature = load_feature_set(FEATURE_DEFS).features[0]
    assert WindowedAggregate.from_feature(feature.model_copy(update={"default": -1.0})).default == -1.0


# ---------------------------------------------------------------- the JVM window operator, held to the same tables


def _jvm_compact(
    feature: WindowedAggregate, steps: list[Step]
) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    from jvm_logic import jvm

    answer = jvm().window(feature, steps)
    return answer, [
        (o[0], o[1], o[2], o[3], o[4]) if o[0] == "fire" else (o[0], o[5]) for o in answer["outputs"]
    ]


@pytest.mark.parametrize(
    ("feature", "steps", "expected"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_jvm_semantics(
    feature: WindowedAggregate, steps: list[Step], expected: list[tuple[Any, ...]]
) -> None:
    answer, got = _jvm_compact(feature, steps)
    assert got == expected
    state, _ = run(feature, steps)
    assert answer["ends"] == sorted(state) and answer["due"] == WindowOperator(feature).due_times_ms(state)


@pytest.mark.parametrize("aggregation", sorted(EXPECTED))
def test_jvm_each_aggregation_fires_its_value(aggregation: str) -> None:
    feature = WindowedAggregate(TUMBLING, aggregation, allowed_lateness_ms=5)  # type: ignore[arg-type]
    steps: list[Step] = [("event", ts, NO_WATERMARK, v) for ts, v in EVENTS[:3]]
    steps += [("wm", 9), ("event", *EVENTS[3][:1], 9, EVENTS[3][1])]
    assert _jvm_compact(feature, steps)[1] == run(feature, steps)[1]


def test_jvm_late_reasons_are_the_python_reasons() -> None:
    from jvm_logic import jvm

    for feature, (ts, wm) in [(lateness("side_output", 5), (3, 20)), (lateness("drop", 5), (3, 20)),
                              (lateness("side_output", 0, SLIDING), (15, 29))]:  # fmt: skip
        (python,) = WindowOperator(feature).on_event({}, ts, 1.0, wm)[1]
        ((kind, *_, event_ts, watermark, reason),) = jvm().window(feature, [("event", ts, wm)])["outputs"]
        assert (kind, event_ts, watermark, reason) == (compact(python)[0], python.event_ts_ms, python.watermark_ms,
                                                      python.reason)  # fmt: skip


def test_jvm_window_made_again_under_a_lower_watermark_counts_only_its_own_events() -> None:
    """The JVM keeps a sliding approx_distinct in panes; a window cleared and made again must not read the events
    in its panes from before (the second [0, 20) took only "b")."""
    feature = WindowedAggregate(SLIDING, "approx_distinct", allowed_lateness_ms=0)
    steps: list[Step] = [
        ("event", 12, NO_WATERMARK, "a"),
        ("wm", 19),
        ("event", 13, 5, "b"),
        ("wm", 19),
        ("wm", 29),
    ]
    expected = [("fire", 0, 20, 1.0, 0), ("fire", 0, 20, 1.0, 0), ("fire", 10, 30, 2.0, 0)]
    assert run(feature, steps)[1] == expected
    assert _jvm_compact(feature, steps)[1] == expected


_steps = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.integers(-40, 120), st.integers(-30, 130),
                  st.one_of(st.integers(-3, 3), st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from(["a", "b"]))),
        st.tuples(st.just("wm"), st.integers(-30, 140)),
    ),
    max_size=25,
)  # fmt: skip


@given(
    steps=_steps,
    aggregation=st.sampled_from(sorted(AGGREGATORS)),
    size=st.integers(1, 30),
    slide=st.integers(1, 30),
    lateness_ms=st.integers(0, 20),
    policy=st.sampled_from(["update", "side_output", "drop"]),
)
def test_jvm_equals_python_on_any_script(
    steps: list[Step], aggregation: str, size: int, slide: int, lateness_ms: int, policy: LatePolicy
) -> None:
    """Watermarks need not rise here: each operator takes what it is given, and both must agree on anything."""
    spec = WindowSpec(size, slide_ms=min(slide, size) if slide < size else None)
    feature = WindowedAggregate(
        spec, aggregation, allowed_lateness_ms=lateness_ms, late_policy=policy, default=-1.5
    )  # type: ignore[arg-type]
    numeric = aggregation not in ("count", "approx_distinct")
    steps = [s if s[0] == "wm" or not numeric or not isinstance(s[3], str) else (*s[:3], 2.5) for s in steps]
    state, expected = run(feature, steps)
    answer, got = _jvm_compact(feature, steps)
    assert got == expected
    assert answer["ends"] == sorted(state) and answer["due"] == WindowOperator(feature).due_times_ms(state)


@pytest.mark.parametrize("aggregation", ["sum", "mean", "approx_distinct", "last"])
def test_jvm_equals_python_on_many_values(aggregation: str) -> None:
    """Past 128 distinct values into the HyperLogLog; sums of wildly different magnitudes rounded once."""
    import random

    rng = random.Random(aggregation)
    values: list[Value] = [rng.choice([rng.randrange(-10**6, 10**6), rng.uniform(-1e12, 1e12) * 10.0 ** rng.randrange(-20, 5),
                                       f"u{rng.randrange(5000)}"]) for _ in range(3_000)]  # fmt: skip
    if aggregation != "approx_distinct":
        values = [v if not isinstance(v, str) else 0.1 for v in values]
    feature = WindowedAggregate(WindowSpec(1_000, slide_ms=250), aggregation, allowed_lateness_ms=100)  # type: ignore[arg-type]
    steps: list[Step] = [("event", rng.randrange(0, 2_000), i // 2 - 100, v) for i, v in enumerate(values)]
    steps.append(("wm", END_OF_STREAM))
    got, expected = _jvm_compact(feature, steps)[1], run(feature, steps)[1]
    if (
        aggregation == "approx_distinct"
    ):  # the sketch's log() may differ from libm's in the last bit of a double:
        got, expected = (
            [o if o[0] != "fire" else (*o[:3], float(np.float32(o[3])), o[4]) for o in outs]
            for outs in (got, expected)
        )
    assert got == expected  # equal as the float32 a delta carries
