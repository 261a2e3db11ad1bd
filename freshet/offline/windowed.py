"""A windowed feature's column at watermark ``until``, computed with numpy from all of its events at once.

What a replica holds in a feature column is the firing with the highest version (``freshet.replay.
final_values``), and versions are window-end-major, so only each item's newest fired window matters. For
the window rules of ``freshet.windows`` (joins, lateness, re-firing, the empty window armed after a
firing) that window and its last firing have a closed form over the events of one item, each with the
watermark ``b`` it arrived under; ``F`` is the final watermark (``until``):

* event ``j`` joins the windows holding ``ts_j`` whose ``end - 1 + L > b_j`` (a suffix of them); it is
  too late when it joins none;
* a window with a joined event fires by ``F`` iff ``end - 1 <= F``; let ``E`` be the newest such end;
* if ``E + step - 1 <= F`` the empty window ``E + step`` (armed by ``E``'s firing, joined by nothing)
  fired the feature's default last: the column is ``default`` at ``version(E + step, 0)``;
* otherwise the column is the aggregate of every event that joined ``E``, at ``version(E, firing)``,
  where ``firing`` counts the late joins (``b_j >= E - 1``), less one unless the window fired before its
  first late join: on time (an event joined before ``E - 1``), or as an armed empty window (an event
  joined ``E - step`` before ``E``'s first event arrived).

``tests/test_backfill_windows.py`` holds this to ``freshet.replay.evaluate`` on generated streams
(shuffled within the bound, late, duplicated). Aggregates follow ``freshet.aggregators`` exactly: sums by
``math.fsum``, ``last`` by greatest (time, value), ``approx_distinct`` through the aggregator itself.

A column whose newest firing cannot be a delta (a value beyond float32) is one the job skips; for
those items ``exact_columns`` replays the item alone through ``freshet.replay.StreamReplay`` and keeps the newest
firing that can. Per item, outputs depend only on the watermark each event arrived under and on ``F``
(a watermark jump fires what the steps between would), so one item can be replayed alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from freshet.aggregators import aggregator
from freshet.offline.columns import FeatureEvents
from freshet.replay import StreamReplay
from freshet.versions import MAX_SEQ, MAX_TIME_MS, VERSION_SEQ_BITS, feature_version
from freshet.windows import END_OF_STREAM, Fire, WindowedAggregate, version_for

Ints = npt.NDArray[np.int64]
_NONE = np.iinfo(np.int64).min
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Column:
    """One feature's final cells: per item, the value and version the newest firing wrote."""

    item_ids: Ints
    values: npt.NDArray[np.float64]
    versions: Ints
    event_time_ms: Ints  # the firing's stamp, window end - 1

    @classmethod
    def empty(cls) -> Column:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, np.zeros(0, dtype=np.float64), none, none)

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])


@dataclass(frozen=True)
class ColumnResult:
    """A feature's column and what happened on the way."""

    column: Column
    too_late: int  # events that joined no window (side output or dropped, by the late policy)
    replayed_items: int  # items whose newest firing was unencodable, replayed exactly


def final_column(feature: WindowedAggregate, events: FeatureEvents, until_ms: int | None) -> ColumnResult:
    """The feature's column once the watermark reaches ``until_ms`` (``None``: the end of the stream)."""
    if len(events) == 0:
        return ColumnResult(Column.empty(), 0, 0)
    w = _Windows.of(feature, events)
    items, group = np.unique(events.item_ids, return_inverse=True)
    candidate = w.newest_fired(until_ms)
    fired = ~w.too_late & (candidate >= w.oldest_joined)
    newest = np.full(items.shape[0], _NONE, dtype=np.int64)
    np.maximum.at(newest, group[fired], candidate[fired])
    has = newest != _NONE
    step = feature.window.step_ms
    default_last = has if until_ms is None else has & (newest + step - 1 <= until_ms)
    values, firings = _newest_window(feature, events, w, group, np.where(has, newest, 0), has & ~default_last)
    ends = np.where(default_last, newest + step, newest)[has]
    firings = np.where(default_last, 0, firings)[has]
    cell_values = np.where(default_last, feature.default, values)[has]
    column = Column(items[has], cell_values, _versions(ends, firings), ends - 1)
    return _replace_unencodable(feature, events, column, until_ms, int(w.too_late.sum()))


@dataclass(frozen=True)
class _Windows:
    """Per event: its window ends (aligned), the oldest it joined, the watermark it arrived under."""

    ts_ms: Ints
    watermark_ms: Ints  # clamped above: below every window it acts as "no watermark yet"
    newest_end: Ints
    oldest_joined: Ints
    too_late: npt.NDArray[np.bool_]
    size_ms: int
    step_ms: int

    @classmethod
    def of(cls, feature: WindowedAggregate, events: FeatureEvents) -> _Windows:
        size, step, lateness = feature.window.size_ms, feature.window.step_ms, feature.allowed_lateness_ms
        ts = events.ts_ms
        b = np.maximum(events.watermark_ms, int(ts.min()) - 2 * size - step - lateness - 2)
        last_start = ts - ts % step
        newest_end = last_start + size
        oldest_end = last_start - (size - 1 - (ts - last_start)) // step * step + size
        lowest = b + 2 - lateness  # joined windows end at or after this: end - 1 + L > b
        oldest_joined = np.maximum(oldest_end, lowest + (size - lowest) % step)
        return cls(ts, b, newest_end, oldest_joined, newest_end < lowest, size, step)

    def newest_fired(self, until_ms: int | None) -> Ints:
        """Per event, the newest of its windows that fires by ``until_ms`` (may be below those it joined)."""
        if until_ms is None:
            return self.newest_end
        cap = until_ms + 1 - (until_ms + 1 - self.size_ms) % self.step_ms  # newest aligned end <= until + 1
        return np.minimum(self.newest_end, cap)

    def joined(self, end: Ints) -> npt.NDArray[np.bool_]:
        """Per event, whether it joined the window ending at ``end`` (one end per event)."""
        holds = (self.ts_ms >= end - self.size_ms) & (self.ts_ms < end)
        return holds & ~self.too_late & (end >= self.oldest_joined)


def _newest_window(
    feature: WindowedAggregate,
    events: FeatureEvents,
    w: _Windows,
    group: Ints,
    newest: Ints,
    chosen: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.float64], Ints]:
    """Per item (where ``chosen``): the aggregate of window ``newest`` and the number of its last firing."""
    n = newest.shape[0]
    end = newest[group]
    in_newest = w.joined(end) & chosen[group]
    late = w.watermark_ms >= end - 1
    late_joins = np.bincount(group[in_newest & late], minlength=n)
    on_time = np.bincount(group[in_newest & ~late], minlength=n) > 0
    first = _first_index(group, in_newest, n)
    armed = _first_index(group, w.joined(end - w.step_ms) & chosen[group], n) < first
    firings = late_joins - 1 + (on_time | armed)
    return _aggregate(feature, events, group, in_newest, n), firings.astype(np.int64)


def _first_index(group: Ints, mask: npt.NDArray[np.bool_], n: int) -> Ints:
    """Per group, the arrival position of its first event in ``mask`` (int64 max if none)."""
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    positions = np.flatnonzero(mask)
    # the first occurrence of each group: the arrays are in arrival order
    groups, at = np.unique(group[positions], return_index=True)
    first[groups] = positions[at]
    return first


def _aggregate(
    feature: WindowedAggregate, events: FeatureEvents, group: Ints, mask: npt.NDArray[np.bool_], n: int
) -> npt.NDArray[np.float64]:
    """Per group, ``feature.aggregation`` over its events in ``mask`` (NaN where none)."""
    name = feature.aggregation
    out = np.full(n, np.nan)
    g = group[mask]
    if g.size == 0:
        return out
    if name == "count":
        counts = np.bincount(g, minlength=n)
        out[counts > 0] = counts[counts > 0]
        return out
    assert events.values is not None, f"{name} aggregates a field"
    values = events.values[mask]
    order = np.lexsort((values, events.ts_ms[mask], g)) if name == "last" else np.argsort(g, kind="stable")
    g, values = g[order], values[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    groups = g[starts]
    if name in ("min", "max"):
        out[groups] = (np.minimum if name == "min" else np.maximum).reduceat(values, starts)
    elif name == "last":
        out[groups] = values[np.r_[starts[1:], g.size] - 1]
    elif name in ("sum", "mean"):
        parts = np.split(values, starts[1:])
        sums = np.array([math.fsum(p.tolist()) + 0.0 for p in parts])
        out[groups] = sums if name == "sum" else sums / np.array([p.size for p in parts])
    else:
        out[groups] = [_distinct(part.tolist()) for part in np.split(values, starts[1:])]
    return out


def _distinct(hashes: list[int]) -> float:
    """``approx_distinct`` of values whose hashes are ``hashes``, through the aggregator's own merge."""
    agg = aggregator("approx_distinct")
    return agg.result(agg.merge(frozenset(hashes), agg.initial()))


def _versions(ends: Ints, firings: Ints) -> Ints:
    """``feature_version`` of each (window end, firing), with its range checks."""
    if ends.size and (
        ends.min() < 0 or ends.max() > MAX_TIME_MS or firings.min() < 0 or firings.max() > MAX_SEQ
    ):
        bad = np.flatnonzero((ends < 0) | (ends > MAX_TIME_MS) | (firings < 0) | (firings > MAX_SEQ))[0]
        feature_version(int(ends[bad]), int(firings[bad]))  # raises the shared rule's error
    return (ends << VERSION_SEQ_BITS) | firings


def _replace_unencodable(
    feature: WindowedAggregate, events: FeatureEvents, column: Column, until_ms: int | None, too_late: int
) -> ColumnResult:
    bad = ~(np.abs(column.values) <= _F32_MAX)  # NaN compares False: caught too
    if not bad.any():
        return ColumnResult(column, too_late, 0)
    exact = exact_column(feature, events, column.item_ids[bad], until_ms)
    keep = ~bad
    merged = Column(*(np.concatenate([getattr(column, f)[keep], getattr(exact, f)]) for f in _COLUMN_FIELDS))
    return ColumnResult(merged, too_late, int(bad.sum()))


_COLUMN_FIELDS = ("item_ids", "values", "versions", "event_time_ms")


def exact_column(
    feature: WindowedAggregate, events: FeatureEvents, item_ids: Ints, until_ms: int | None
) -> Column:
    """The column of ``item_ids`` by replaying each item alone through ``freshet.replay.StreamReplay``.

    Keeps, per item, the newest firing whose value float32 can hold (the job skips the others).
    """
    end_ms = END_OF_STREAM if until_ms is None else until_ms
    cells: list[tuple[int, float, int, int]] = []
    for item in item_ids.tolist():
        mine = events.take(events.item_ids == item)
        if len(mine) == 0:
            continue
        best = _newest_encodable(feature, mine, end_ms)
        if best is not None:
            cells.append((item, best.value, version_for(best), best.event_time_ms))
    if not cells:
        return Column.empty()
    ids, values, versions, stamps = zip(*cells, strict=True)
    return Column(
        np.array(ids, np.int64), np.array(values), np.array(versions, np.int64), np.array(stamps, np.int64)
    )


def _newest_encodable(feature: WindowedAggregate, mine: FeatureEvents, end_ms: int) -> Fire | None:
    assert feature.aggregation != "approx_distinct", "a distinct count always fits float32"
    values: list[Any] = [1] * len(mine) if mine.values is None else mine.values.tolist()
    replay: StreamReplay[int] = StreamReplay(feature)
    outputs = []
    for ts_ms, value, watermark_ms in zip(
        mine.ts_ms.tolist(), values, mine.watermark_ms.tolist(), strict=True
    ):
        outputs += replay.advance(watermark_ms)
        outputs += replay.on_event(ts_ms, 0, value)
    outputs += replay.advance(end_ms)
    fires = [out for _, out in outputs if isinstance(out, Fire) and abs(out.value) <= _F32_MAX]
    return max(fires, key=version_for, default=None)
