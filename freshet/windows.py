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

A window only exists once an event joined it, so every firing carries at least one event. A
feature column holds the latest fired window: the replica keeps the highest version, and versions
are window-end-major. Aggregates are not idempotent: a raw event delivered twice counts twice.
"""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        aggregator(self.aggregation)  # raises on an unknown name
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed lateness must be >= 0, got {self.allowed_lateness_ms} ms")
        if self.late_policy not in get_args(LatePolicy):
            raise ValueError(f"late policy must be one of {get_args(LatePolicy)}, got {self.late_policy!r}")

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
    """One open window: its accumulator and how many times it has fired."""

    acc: Any
    firings: int


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
        state = dict(state)
        for start, end in joined:
            acc, firings = state.get(end) or Slot(self._agg.initial(), 0)
            acc = self._agg.add(acc, value, event_ts_ms)
            if end - 1 <= watermark_ms:  # already fired: re-fire with the corrected value
                outputs.append(Fire(start, end, self._agg.result(acc), firings, end - 1))
                firings += 1
            state[end] = Slot(acc, firings)
        return state, outputs

    def on_watermark(self, state: WindowState, watermark_ms: int) -> tuple[WindowState, list[Output]]:
        """The watermark advanced to ``watermark_ms``: fire windows it passed, clear expired ones."""
        if not any(self._acts_at(end, slot) <= watermark_ms for end, slot in state.items()):
            return state, []
        outputs: list[Output] = []
        kept: WindowState = {}
        for end in sorted(state):
            acc, firings = state[end]
            if firings == 0 and end - 1 <= watermark_ms:
                outputs.append(Fire(end - self._size_ms, end, self._agg.result(acc), 0, end - 1))
                firings = 1
            if end - 1 + self._lateness_ms > watermark_ms:
                kept[end] = Slot(acc, firings)
        return kept, outputs

    def due_times_ms(self, state: WindowState) -> list[int]:
        """Watermarks at which ``on_watermark`` will act on ``state`` (for event-time timers).

        >>> op = WindowOperator(WindowedAggregate(WindowSpec(10), "count", allowed_lateness_ms=5))
        >>> state, _ = op.on_event(op.initial_state(), 3, 1.0, NO_WATERMARK)
        >>> op.due_times_ms(state)
        [9, 14]
        """
        due = {end - 1 + self._lateness_ms for end in state}
        due.update(end - 1 for end, slot in state.items() if slot.firings == 0)
        return sorted(due)

    def _acts_at(self, end: int, slot: Slot) -> int:
        return end - 1 if slot.firings == 0 else end - 1 + self._lateness_ms

    def _too_late(
        self, newest: tuple[int, int], event_ts_ms: int, value: Value, watermark_ms: int
    ) -> Late | Dropped:
        reason = f"late: window [{newest[0]},{newest[1]}) closed at watermark {watermark_ms}"
        if self.feature.late_policy == "side_output":
            return Late(reason, event_ts_ms, value, watermark_ms)
        return Dropped(reason, event_ts_ms, watermark_ms)
