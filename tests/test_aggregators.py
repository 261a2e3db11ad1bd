"""Aggregators: table tests for each result, and the laws that make them safe in a stream.

The laws (hypothesis): adding in any order, and merging any split of the events, gives the same
accumulator result as adding them all in order; merge is associative and commutative on results;
``initial()`` is the identity of merge; accumulators survive pickling (Flink keyed state).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshet.aggregators import (
    AGGREGATORS,
    EXACT_DISTINCT_LIMIT,
    Aggregator,
    Value,
    aggregator,
    stable_hash64,
)

NUMERIC = ["count", "sum", "mean", "min", "max", "last"]

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
ts = st.integers(min_value=0, max_value=10_000)
numeric_events = st.lists(st.tuples(finite, ts), max_size=40)
distinct_values: st.SearchStrategy[Value] = st.one_of(
    st.integers(-50, 50), st.sampled_from(["a", "b", "c", "d"]), st.floats(-5, 5, allow_nan=False)
)
distinct_events = st.lists(st.tuples(distinct_values, ts), max_size=300)


def fold(agg: Aggregator[Any], events: Sequence[tuple[Value, int]]) -> Any:
    acc = agg.initial()
    for value, ts_ms in events:
        acc = agg.add(acc, value, ts_ms)
    return acc


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


EVENTS: list[tuple[Value, int]] = [(3.0, 10), (-1.5, 30), (7.25, 20), (-1.5, 30), (0.5, 5)]


@pytest.mark.parametrize(
    ("name", "events", "expected"),
    [
        ("count", EVENTS, 5.0),
        ("sum", EVENTS, 7.75),
        ("mean", EVENTS, 1.55),
        ("min", EVENTS, -1.5),
        ("max", EVENTS, 7.25),
        ("last", EVENTS, -1.5),
        ("last", [(1.0, 30), (9.0, 30), (4.0, 20)], 9.0),  # equal times: the greatest value wins
        ("sum", [(1e16, 0), (1.0, 0), (-1e16, 0)], 1.0),  # exact, not naive float rounding
        ("sum", [(0.1, 0)] * 10, math.fsum([0.1] * 10)),
        ("mean", [(0.1, 0), (0.2, 0), (0.3, 0)], math.fsum([0.1, 0.2, 0.3]) / 3),
        ("approx_distinct", [("u1", 0), ("u2", 0), ("u1", 1), (3, 0), (3.0, 0), ("3", 0)], 4.0),
        ("count", [], 0.0),
        ("sum", [], 0.0),
        ("mean", [], math.nan),
        ("min", [], math.nan),
        ("max", [], math.nan),
        ("last", [], math.nan),
        ("approx_distinct", [], 0.0),
    ],
)
def test_results(name: str, events: list[tuple[Value, int]], expected: float) -> None:
    agg = aggregator(name)
    assert same(agg.result(fold(agg, events)), expected)


def test_negative_zero_reads_as_zero() -> None:
    for name in ("min", "max", "sum", "last"):
        agg = aggregator(name)
        got = agg.result(fold(agg, [(-0.0, 0), (0.0, 0)]))
        assert math.copysign(1.0, got) == 1.0, name


def test_unknown_aggregation_names_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown aggregation 'median'; expected one of \['approx_distinct'"
    ):
        aggregator("median")


def test_numeric_aggregation_rejects_strings() -> None:
    with pytest.raises(TypeError, match="needs a number"):
        aggregator("sum").add((), "x", 0)


def test_stable_hash_is_fixed() -> None:
    # A changed hash would silently change every approx_distinct value after a deploy.
    assert stable_hash64("u1") == 4951862600420806941
    assert stable_hash64(42) == stable_hash64(42.0)


@pytest.mark.parametrize("name", NUMERIC)
@given(events=numeric_events, data=st.data())
@settings(max_examples=60, deadline=None)
def test_order_does_not_matter(name: str, events: list[tuple[float, int]], data: st.DataObject) -> None:
    agg = aggregator(name)
    shuffled = data.draw(st.permutations(events))
    assert same(agg.result(fold(agg, shuffled)), agg.result(fold(agg, events)))


@pytest.mark.parametrize("name", NUMERIC)
@given(events=numeric_events, data=st.data())
@settings(max_examples=60, deadline=None)
def test_merge_of_any_split_equals_adding_all(
    name: str, events: list[tuple[float, int]], data: st.DataObject
) -> None:
    agg = aggregator(name)
    parts = data.draw(st.lists(st.integers(0, 3), min_size=len(events), max_size=len(events)))
    groups: list[list[tuple[Value, int]]] = [[], [], [], []]
    for event, part in zip(events, parts, strict=True):
        groups[part].append(event)
    merged = agg.initial()
    for group in data.draw(st.permutations(groups)):
        merged = agg.merge(merged, fold(agg, group))
    assert same(agg.result(merged), agg.result(fold(agg, events)))


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@given(a=numeric_events, b=numeric_events, c=numeric_events)
@settings(max_examples=40, deadline=None)
def test_merge_laws(
    name: str, a: list[tuple[float, int]], b: list[tuple[float, int]], c: list[tuple[float, int]]
) -> None:
    agg = aggregator(name)
    fa, fb, fc = fold(agg, a), fold(agg, b), fold(agg, c)
    left = agg.merge(agg.merge(fa, fb), fc)
    right = agg.merge(fa, agg.merge(fb, fc))
    assert same(agg.result(left), agg.result(right))
    assert same(agg.result(agg.merge(fa, fb)), agg.result(agg.merge(fb, fa)))
    assert same(agg.result(agg.merge(agg.initial(), fa)), agg.result(fa))
    assert same(agg.result(agg.merge(fa, agg.initial())), agg.result(fa))


@given(events=distinct_events, data=st.data())
@settings(max_examples=80, deadline=None)
def test_approx_distinct_state_depends_only_on_the_set_of_values(
    events: list[tuple[Value, int]], data: st.DataObject
) -> None:
    agg = aggregator("approx_distinct")
    shuffled = data.draw(st.permutations(events))
    cut = data.draw(st.integers(0, len(events)))
    whole = fold(agg, events)
    assert fold(agg, shuffled) == whole
    assert agg.merge(fold(agg, shuffled[:cut]), fold(agg, shuffled[cut:])) == whole


def test_approx_distinct_is_exact_up_to_the_limit_then_a_sketch() -> None:
    agg = aggregator("approx_distinct")
    exact = fold(agg, [(f"user-{i}", 0) for i in range(EXACT_DISTINCT_LIMIT)])
    assert agg.result(exact) == EXACT_DISTINCT_LIMIT
    assert isinstance(exact, frozenset)
    assert isinstance(agg.add(exact, "one-more", 0), bytes)


@pytest.mark.parametrize("n", [200, 1_000, 10_000, 100_000])
def test_approx_distinct_error_is_within_the_documented_bound(n: int) -> None:
    agg = aggregator("approx_distinct")
    got = agg.result(fold(agg, [(f"user-{i}", 0) for i in range(n)]))
    # 1.04 / sqrt(1024) = 3.25% is one standard error; 4 standard errors never fail by chance here.
    assert abs(got - n) / n < 4 * 0.0325


def test_approx_distinct_merges_a_set_with_a_sketch() -> None:
    agg = aggregator("approx_distinct")
    values: list[tuple[Value, int]] = [(i, 0) for i in range(1_000)]
    small, big = fold(agg, values[:10]), fold(agg, values[10:])
    assert agg.merge(small, big) == agg.merge(big, small) == fold(agg, values)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_accumulators_survive_pickling(name: str) -> None:
    agg = aggregator(name)
    events: list[tuple[Value, int]] = [(float(i), i) for i in range(300)]
    acc = fold(agg, events)
    assert same(agg.result(pickle.loads(pickle.dumps(acc))), agg.result(acc))


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_add_and_merge_never_change_their_arguments(name: str) -> None:
    agg = aggregator(name)
    a = fold(agg, [(1.0, 1), (2.0, 2)])
    b = fold(agg, [(3.0, 3)])
    before = (pickle.dumps(a), pickle.dumps(b))
    agg.add(a, 9.0, 9)
    agg.merge(a, b)
    assert (pickle.dumps(a), pickle.dumps(b)) == before
