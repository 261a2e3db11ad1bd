"""Replay a keyed event stream through one feature's window operator, as the stream job would.

Backfill and the oracle tests use this to get, from logged events, exactly the firings, late and
dropped events the live job produces. What a stream outputs depends on the events' arrival order
*and* on where the watermarks fall between them, so both are inputs: events in arrival order, and
the watermark emitted after each one (by default the bounded-out-of-orderness watermark after every
event of a single partition, ``freshet.watermarks.watermarks_after_each``).

The replay keeps, like the job, an event-time timer per item at each of ``due_times_ms``, so the
empty window armed after a window's events (``freshet.windows``) fires its default at the same
watermark as in the stream, and an item whose state is gone costs nothing.

Per item the outputs are in exactly the stream's order. Between items, outputs of one watermark
advance come item by item, in the order of their earliest due times (then of scheduling); Flink
leaves that order open, and no result depends on it (deltas are keyed per item).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from freshet.aggregators import Value
from freshet.watermarks import watermarks_after_each
from freshet.windows import (
    NO_WATERMARK,
    Fire,
    Output,
    WindowedAggregate,
    WindowOperator,
    WindowState,
    version_for,
)

K = TypeVar("K", bound=Hashable)


class StreamReplay(Generic[K]):
    """One feature's window operator over many items: their states, the watermark, event-time timers."""

    def __init__(self, feature: WindowedAggregate) -> None:
        self.operator = WindowOperator(feature)
        self.states: dict[K, WindowState] = {}
        self.watermark_ms = NO_WATERMARK
        self._timers: list[tuple[int, int, K]] = []  # (due watermark, scheduling order, item)
        self._order = itertools.count()

    def on_event(self, ts_ms: int, key: K, value: Value) -> list[tuple[K, Output]]:
        """An event of item ``key`` arrives under the current watermark."""
        old = self.states.get(key, {})
        new, outputs = self.operator.on_event(old, ts_ms, value, self.watermark_ms)
        self._store(key, old, new)
        return [(key, out) for out in outputs]

    def advance(self, watermark_ms: int) -> list[tuple[K, Output]]:
        """The watermark moves to ``watermark_ms`` (ignored unless it moves forward)."""
        if watermark_ms <= self.watermark_ms:
            return []
        self.watermark_ms = watermark_ms
        due: dict[K, None] = {}
        while self._timers and self._timers[0][0] <= watermark_ms:
            due[heapq.heappop(self._timers)[2]] = None
        outputs: list[tuple[K, Output]] = []
        for key in due:
            if key in self.states:
                old = self.states[key]
                new, outs = self.operator.on_watermark(old, watermark_ms)
                self._store(key, old, new)
                outputs.extend((key, out) for out in outs)
        return outputs

    def _store(self, key: K, old: WindowState, new: WindowState) -> None:
        """Keep ``new`` as the item's state, with a timer at each of its due times not yet set.

        Every due time of a state is after the watermark it was made under, and the timers of the
        old state that are after it are still set; a timer that finds nothing due does nothing.
        """
        unset = set(self.operator.due_times_ms(new)) - set(self.operator.due_times_ms(old))
        for due_ms in sorted(unset):
            heapq.heappush(self._timers, (due_ms, next(self._order), key))
        if new:
            self.states[key] = new
        else:
            self.states.pop(key, None)


def evaluate(
    events: Iterable[tuple[int, K, Value]],
    feature: WindowedAggregate,
    *,
    max_out_of_orderness_ms: int | None = None,
    watermarks: Sequence[int] | None = None,
    end_watermark_ms: int | None = None,
) -> list[tuple[K, Output]]:
    """Every output the stream produces for ``events`` ``(ts_ms, key, value)`` given in arrival order.

    ``watermarks[i]`` is the watermark emitted right after event ``i``; without it, the
    bounded-out-of-orderness watermark after every event is used. ``end_watermark_ms`` is one more
    watermark after the last event: ``END_OF_STREAM`` fires everything, backfill passes its
    ``--until`` time.

    >>> from freshet.windows import WindowSpec, END_OF_STREAM
    >>> feature = WindowedAggregate(WindowSpec(10), "count", allowed_lateness_ms=5)
    >>> for key, out in evaluate([(1, "a", 1), (12, "a", 1), (3, "a", 1), (16, "a", 1), (2, "a", 1)],
    ...                          feature, max_out_of_orderness_ms=0, end_watermark_ms=END_OF_STREAM):
    ...     print(key, out)
    a Fire(window_start_ms=0, window_end_ms=10, value=1.0, firing=0, event_time_ms=9)
    a Fire(window_start_ms=0, window_end_ms=10, value=2.0, firing=1, event_time_ms=9)
    a Dropped(reason='late: window [0,10) closed at watermark 15', event_ts_ms=2, watermark_ms=15)
    a Fire(window_start_ms=10, window_end_ms=20, value=2.0, firing=0, event_time_ms=19)
    a Fire(window_start_ms=20, window_end_ms=30, value=0.0, firing=0, event_time_ms=29)

    The last line is the empty window after the item's last events, firing the default.
    """
    events = list(events)
    if watermarks is None:
        if max_out_of_orderness_ms is None:
            raise ValueError("give either the watermarks or max_out_of_orderness_ms to derive them")
        watermarks = watermarks_after_each([ts for ts, _, _ in events], max_out_of_orderness_ms)
    if len(watermarks) != len(events):
        raise ValueError(f"{len(watermarks)} watermarks for {len(events)} events; give one after each event")
    replay: StreamReplay[K] = StreamReplay(feature)
    outputs: list[tuple[K, Output]] = []
    for (ts_ms, key, value), watermark_ms in zip(events, watermarks, strict=True):
        outputs += replay.on_event(ts_ms, key, value)
        outputs += replay.advance(watermark_ms)
    if end_watermark_ms is not None:
        outputs += replay.advance(end_watermark_ms)
    return outputs


class FinalValue(NamedTuple):
    """A feature column's value on one row, and the version it was written with."""

    value: float
    version: int


def final_values(outputs: Iterable[tuple[K, Output]]) -> dict[K, FinalValue]:
    """Each item's column after a replica applied ``outputs``: the firing with the highest version.

    Items without a firing keep the column default (``layout.FeatureColumn.default``).
    """
    final: dict[K, FinalValue] = {}
    for key, out in outputs:
        if isinstance(out, Fire):
            version = version_for(out)
            if key not in final or version > final[key].version:
                final[key] = FinalValue(out.value, version)
    return final


def latest_per_key(
    keys: npt.NDArray[Any], versions: npt.NDArray[np.int64], values: npt.NDArray[np.floating[Any]]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.floating[Any]]]:
    """Vectorized ``final_values``: for each distinct key, the value with the highest version.

    >>> k, ver, val = latest_per_key(np.array([7, 3, 7]), np.array([5, 1, 9]), np.array([0.5, 1.0, 2.0]))
    >>> k.tolist(), ver.tolist(), val.tolist()
    ([3, 7], [1, 9], [1.0, 2.0])
    """
    if len(keys) == 0:
        return keys, versions, values
    order = np.lexsort((versions, keys))
    sorted_keys = keys[order]
    is_last = np.append(sorted_keys[1:] != sorted_keys[:-1], True)
    pick = order[is_last]
    return keys[pick], versions[pick], values[pick]
