"""Event-time windows of one feature for one item: assignment, firing, lateness, state cleanup.

This is the window semantics the Flink job realizes and backfill replays (``freshet.replay``):
a pure state machine driven by events and watermarks, both passed in; nothing reads a clock.
All times are integer epoch milliseconds; a window ``[start, end)`` excludes its end, and window
starts are aligned to epoch 0 (Flink's default offset).

The rules are Flink's ``WindowOperator`` with ``EventTimeTrigger``. For a window with
``max_ts = end - 1`` (Flink's ``maxTimestamp()``), allowed lateness ``L`` and the watermark ``W``
current when an element arrives:

* the window **fires** on time, once, with firing number 0, when ``W >= max_ts``;
* an event is **too late** for the window when ``max_ts + L <= W`` (Flink's ``isWindowLate``):
  the window's state is gone and the event cannot join it;
* otherwise the event **joins** the window (creating its state if there is none). If the window
  is already past its firing time (``max_ts <= W``: a late event within allowed lateness), it
  re-fires at once with the corrected absolute value and the next firing number, so its delta
  version (``version_for``) is higher than every earlier one of that window;
* an event too late for **every** window it belongs to goes to the late-data policy. An event of a
  sliding window that is too late only for its older windows joins the newer ones and is not late;
* a window's state is cleared when ``W >= max_ts + L`` (with ``L = 0``, right after it fires), so
  state is bounded by the windows still inside their allowed lateness.

Late-data policy. Allowed lateness applies under every policy: within it a late event updates the
window, which re-fires (this is ``update``'s corrected value with a higher version). The policy
names the fate of a *too late* event, which can no longer change any result:

* ``side_output``: a ``Late`` output with the reason, for the declared topic;
* ``update`` and ``drop``: a ``Dropped`` output, to be counted.

With ``drop`` the feature definitions require ``L = 0`` (``freshet.spec``), so there every late
event is too late and dropped; this module treats ``drop`` with ``L > 0`` like ``update``.

Empty windows. A window's state is made by its first event, so a window with no events would never
fire, and a column would keep the last fired value for good (``likes_1h = 50`` hours after the last
like). Instead, a window that fires **with events** (on time, or late within allowed lateness)
**arms** the item's next window, the one ending at ``end + step`` (``step``: the slide, or the size
when tumbling), unless that window already has state. An armed window is empty state:

* when the watermark reaches its ``max_ts`` and no event has joined it, it fires once with the
  feature's ``default`` (firing 0, ``version_for`` as usual, stamped ``end - 1``); at once when the
  watermark is already past it (the firing that armed it was late);
* an event joining it before then makes it an ordinary window, which fires its events' value;
* after its default firing it is kept, like any fired window, until ``max_ts + L``, so a late event
  joining it re-fires it with firing 1 (a higher version than the default) and the corrected value.

An empty firing arms nothing: the column already holds what each further empty window would write.
So one default is written per gap, and an idle item keeps no state once that window's allowed
lateness has passed. A late firing arms too, since its value may be the column's newest (a window
whose first event came late, or a late event into an empty-fired window) and would otherwise stay.
Versions make this safe: the default's window end is greater than the arming window's, so it
replaces that value; every firing of a later window replaces the default.

A feature column holds the latest fired window: the replica keeps the highest version, and versions
are window-end-major. Aggregates are not idempotent: a raw event delivered twice counts twice.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

from freshet.aggregators import Aggregation, Value, aggregator
from freshet.versions import feature_version

if TYPE_CHECKING:
    from freshet.spec import Feature

LatePolicy = Literal["update", "side_output", "drop"]

#: Flink's ``Long.MIN_VALUE`` watermark: nothing has been promised yet.
NO_WATERMARK = -(2**63)
#: Flink's ``Long.MAX_VALUE`` watermark, sent when a bounded input ends: every window fires and clears.
END_OF_STREAM = 2**63 - 1


@dataclass(frozen=True)
class WindowSpec:
    """Tumbling (``slide_ms`` is ``None``) or sliding event-time windows of ``size_ms``."""

    size_ms: int
    slide_ms: int | None = None

    def __post_init__(self) -> None:
        if self.size_ms <= 0:
            raise ValueError(f"window size must be positive, got {self.size_ms} ms")
        if self.slide_ms is not None and not 0 < self.slide_ms <= self.size_ms:
            raise ValueError(f"window slide must be in (0, size={self.size_ms}] ms, got {self.slide_ms} ms")

    @property
    def step_ms(self) -> int:
        """Distance between consecutive window starts."""
        return self.size_ms if self.slide_ms is None else self.slide_ms

    def windows_for(self, ts_ms: int) -> list[tuple[int, int]]:
        """The windows ``(start, end)`` holding an event at ``ts_ms``, oldest first.

        >>> WindowSpec(60_000).windows_for(61_000)
        [(60000, 120000)]
        >>> WindowSpec(30, slide_ms=10).windows_for(25)
        [(0, 30), (10, 40), (20, 50)]
        >>> WindowSpec(10).windows_for(-1)
        [(-10, 0)]
        """
        last_start = ts_ms - ts_ms % self.step_ms
        first_start = last_start - (self.size_ms - 1 - (ts_ms - last_start)) // self.step_ms * self.step_ms
        return [(s, s + self.size_ms) for s in range(first_start, last_start + 1, self.step_ms)]


@dataclass(frozen=True)
class WindowedAggregate:
    """What the window operator needs of one declared windowed feature."""

    window: WindowSpec
    aggregation: Aggregation
    allowed_lateness_ms: int = 0
    late_policy: LatePolicy = "update"
    #: the value an empty armed window fires (the feature's declared column default)
    default: float = 0.0

    def __post_init__(self) -> None:
        aggregator(self.aggregation)  # raises on an unknown name
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed lateness must be >= 0, got {self.allowed_lateness_ms} ms")
        if self.late_policy not in get_args(LatePolicy):
            raise ValueError(f"late policy must be one of {get_args(LatePolicy)}, got {self.late_policy!r}")
        if not math.isfinite(self.default):
            raise ValueError(f"default must be a finite number, got {self.default}")

    @classmethod
    def from_feature(cls, feature: Feature) -> WindowedAggregate:
        """The window semantics of a declared feature (its filter and field are the caller's)."""
        window = feature.window
        slide_ms = window.slide_ms if window.kind == "sliding" else None
        return cls(
            WindowSpec(window.size_ms, slide_ms),
            feature.aggregation,
            allowed_lateness_ms=feature.allowed_lateness_ms,
            late_policy=feature.late.policy,
            default=feature.default,
        )


@dataclass(frozen=True)
class Fire:
    """A window's absolute result. ``event_time_ms`` is ``window_end_ms - 1``, as Flink stamps it."""

    window_start_ms: int
    window_end_ms: int
    value: float
    firing: int
    event_time_ms: int


@dataclass(frozen=True)
class Late:
    """An event too late for all its windows, for the side output (policy ``side_output``)."""

    reason: str
    event_ts_ms: int
    value: Value
    watermark_ms: int


@dataclass(frozen=True)
class Dropped:
    """An event too late for all its windows, dropped and to be counted (``update``, ``drop``)."""

    reason: str
    event_ts_ms: int
    watermark_ms: int


Output = Fire | Late | Dropped


class Slot(NamedTuple):
    """One open window: its accumulator, how many times it has fired, and whether it holds no event."""

    acc: Any
    firings: int
    #: armed by the previous window's firing and joined by no event yet: it fires (or fired) the default
    empty: bool = False


WindowState = dict[int, Slot]
"""One item's open windows of one feature, by window end (ms). Empty when nothing is pending."""


def version_for(fire: Fire) -> int:
    """The delta version of a firing (``freshet.versions.feature_version``): window end, then firing.

    >>> version_for(Fire(0, 60_000, 3.0, 1, 59_999)) == 60_000 * 2**20 + 1
    True
    """
    return feature_version(fire.window_end_ms, fire.firing)


class WindowOperator:
    """The pure per-item window state machine of one feature.

    Methods never change the state passed in; they return the new state and the outputs, in
    order. ``on_event`` first applies its watermark (as Flink fires timers before the next element),
    so a caller that only reports watermarks with events still gets every firing.
    """

    def __init__(self, feature: WindowedAggregate) -> None:
        self.feature = feature
        self._agg = aggregator(feature.aggregation)
        self._size_ms = feature.window.size_ms
        self._step_ms = feature.window.step_ms
        self._lateness_ms = feature.allowed_lateness_ms

    def initial_state(self) -> WindowState:
        """No open windows."""
        return {}

    def on_event(
        self, state: WindowState, event_ts_ms: int, value: Value, watermark_ms: int
    ) -> tuple[WindowState, list[Output]]:
        """One event arriving while the watermark is ``watermark_ms``."""
        state, outputs = self.on_watermark(state, watermark_ms)
        windows = self.feature.window.windows_for(event_ts_ms)
        joined = [(s, e) for s, e in windows if e - 1 + self._lateness_ms > watermark_ms]
        if not joined:
            outputs.append(self._too_late(windows[-1], event_ts_ms, value, watermark_ms))
            return state, outputs
        slots = dict(state)
        for start, end in joined:
            acc, firings, _ = slots.get(end) or Slot(self._agg.initial(), 0)
            acc = self._agg.add(acc, value, event_ts_ms)
            if end - 1 <= watermark_ms:  # already due: (re-)fire with the corrected value
                outputs.append(Fire(start, end, self._agg.result(acc), firings, end - 1))
                firings += 1
                self._arm_next(slots, end)
            slots[end] = Slot(acc, firings)
        # A window armed above that the watermark already passed fires its default now; only after
        # the joins, so a window this event also joined fires its value instead of the default first.
        slots, fired_empty = self.on_watermark(slots, watermark_ms)
        return slots, outputs + fired_empty

    def on_watermark(self, state: WindowState, watermark_ms: int) -> tuple[WindowState, list[Output]]:
        """The watermark advanced to ``watermark_ms``: fire windows it passed, clear expired ones.

        A window firing with events arms the next one, which fires in the same call when due.
        """
        if not any(self._acts_at(end, slot) <= watermark_ms for end, slot in state.items()):
            return state, []
        outputs: list[Output] = []
        slots, kept = dict(state), {}
        ends = sorted(slots)  # a sorted list is a heap: windows armed on the way join in end order
        while ends:
            end = heapq.heappop(ends)
            slot = slots[end]
            if slot.firings == 0 and end - 1 <= watermark_ms:
                outputs.append(self._fire_on_time(end, slot))
                slot = slot._replace(firings=1)
                if not slot.empty and self._arm_next(slots, end):
                    heapq.heappush(ends, end + self._step_ms)
            if end - 1 + self._lateness_ms > watermark_ms:
                kept[end] = slot
        return kept, outputs

    def due_times_ms(self, state: WindowState) -> list[int]:
        """Watermarks at which ``on_watermark`` will act on ``state`` (for event-time timers).

        They include the times of the window that a pending firing will arm, so timers registered
        after each event alone already cover every firing until the next event.

        >>> op = WindowOperator(WindowedAggregate(WindowSpec(10), "count", allowed_lateness_ms=5))
        >>> state, _ = op.on_event(op.initial_state(), 3, 1.0, NO_WATERMARK)
        >>> op.due_times_ms(state)  # [0, 10) fires at 9 and clears at 14; [10, 20) the same 10 later
        [9, 14, 19, 24]
        """
        due = set()
        for end, slot in state.items():
            due.add(end - 1 + self._lateness_ms)
            if slot.firings == 0:
                due.add(end - 1)
                armed = end + self._step_ms
                if not slot.empty and armed not in state:
                    due.update((armed - 1, armed - 1 + self._lateness_ms))
        return sorted(due)

    def _fire_on_time(self, end: int, slot: Slot) -> Fire:
        value = self.feature.default if slot.empty else self._agg.result(slot.acc)
        return Fire(end - self._size_ms, end, value, 0, end - 1)

    def _arm_next(self, slots: WindowState, end: int) -> bool:
        """Arm the window after ``end`` in ``slots`` unless it has state; whether it was armed."""
        armed = end + self._step_ms
        if armed in slots:
            return False
        slots[armed] = Slot(self._agg.initial(), 0, empty=True)
        return True

    def _acts_at(self, end: int, slot: Slot) -> int:
        return end - 1 if slot.firings == 0 else end - 1 + self._lateness_ms

    def _too_late(
        self, newest: tuple[int, int], event_ts_ms: int, value: Value, watermark_ms: int
    ) -> Late | Dropped:
        reason = f"late: window [{newest[0]},{newest[1]}) closed at watermark {watermark_ms}"
        if self.feature.late_policy == "side_output":
            return Late(reason, event_ts_ms, value, watermark_ms)
        return Dropped(reason, event_ts_ms, watermark_ms)
