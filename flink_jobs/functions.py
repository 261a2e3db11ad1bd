"""The Flink functions of the delta job: each moves state in and out of Flink and calls ``freshet.job_logic``.

They live in a module of their own (not in the job script) so that Flink pickles them by reference and
every Python worker imports the same code. Each takes the validated ``FeatureSet`` (pickled with it) and
builds its pure logic in ``open``. Records they emit to Kafka are ``Row(key: str, payload: bytes)``
(``flink_jobs.sinks.keyed_bytes_type``).

Counters (Flink metrics of the operator): ``rejected_<reason>`` per parse operator;
``late_side_output_<feature>``, ``late_dropped_<feature>`` and ``unencodable_<feature>`` in the window
operator; ``embedded``, ``model_rejected_<reason>`` and the gauge ``model_version`` in
the embedding operator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyflink.common import Row, Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (
    KeyedProcessFunction,
    KeySelector,
    MapFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from freshet.deltas import encode_key
from freshet.events import Event, Rejected
from freshet.job_logic import (
    EligibilityLogic,
    EmbeddingLogic,
    EngagementLogic,
    EventParser,
    ModelWatcher,
    Step,
)

if TYPE_CHECKING:
    from pyflink.metrics import Counter, MetricGroup

    from freshet.spec import FeatureSet

#: reason codes of ``freshet.events``; counters are registered up front so a dashboard shows zeros
REASON_CODES = ("malformed_json", "not_an_object", "missing_field", "wrong_type", "absurd_timestamp")


class Counters:
    """Flink counters of one operator, created on first use."""

    def __init__(self, group: MetricGroup, names: tuple[str, ...] = ()) -> None:
        self._group = group
        self._counters: dict[str, Counter] = {}
        for name in names:
            self.inc(name, 0)

    def inc(self, name: str, n: int = 1) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = self._group.counter(name)
        if n:
            counter.inc(n)

    def add_all(self, prefix: str, counts: Mapping[str, int]) -> None:
        for name, n in counts.items():
            self.inc(f"{prefix}{name}", n)


class ParseEvents(ProcessFunction):
    """Raw bytes of one source → ``Event``; rejections go to the DLQ side output with their reason."""

    def __init__(self, feature_set: FeatureSet, source: str, dlq: OutputTag) -> None:
        self._feature_set, self._source, self._dlq = feature_set, source, dlq

    def open(self, runtime_context: RuntimeContext) -> None:
        self._parse = EventParser.of(self._feature_set, self._source)
        self._counters = Counters(
            runtime_context.get_metrics_group(), tuple(f"rejected_{c}" for c in REASON_CODES)
        )

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator[Any]:
        parsed = self._parse(bytes(value))
        if isinstance(parsed, Rejected):
            self._counters.inc(f"rejected_{parsed.reason_code}")
            yield self._dlq, Row(self._source, parsed.to_dlq_json())
        else:
            yield parsed


class DeadLetters(MapFunction):
    """``Row(jvm_reason, raw)`` refused by the JVM parser → the dead-letter record, written by the Python parser
    so the DLQ keeps one wording (the JVM's reason only if the two disagree, which the tests rule out)."""

    def __init__(self, feature_set: FeatureSet, source: str) -> None:
        self._feature_set, self._source = feature_set, source

    def open(self, runtime_context: RuntimeContext) -> None:
        self._parse = EventParser.of(self._feature_set, self._source)
        self._counters = Counters(
            runtime_context.get_metrics_group(), tuple(f"rejected_{c}" for c in REASON_CODES)
        )

    def map(self, value: Row) -> Row:
        jvm_reason, raw = value[0], bytes(value[1])
        parsed = self._parse(raw)
        rejected = parsed if isinstance(parsed, Rejected) else Rejected(self._source, jvm_reason, raw)
        self._counters.inc(f"rejected_{rejected.reason_code}")
        return Row(self._source, rejected.to_dlq_json())


def item_id_of(event: Event) -> int:
    """The key of the windowed features: the item id."""
    return event.item_id


class ItemShard(KeySelector):
    """The key of the embedding operator: one of ``shards`` buckets of item ids, so batches can form."""

    def __init__(self, shards: int) -> None:
        self._shards = max(1, shards)

    def get_key(self, value: Event) -> int:
        return value.item_id % self._shards


class EventTime(TimestampAssigner):
    """An event's declared event time (``Event.ts_ms``) as its Flink timestamp."""

    def extract_timestamp(self, value: Event, record_timestamp: int) -> int:
        return value.ts_ms


class WindowedFeatures(KeyedProcessFunction):
    """Keyed by item id: the item's window states of one source's features, and a timer at their next due time.

    The states are one ``ValueState`` (a picklable dict), cleared when no window is open, so state is
    bounded by the windows still inside their allowed lateness.
    """

    def __init__(self, feature_set: FeatureSet, source: str, late_tags: Mapping[str, OutputTag]) -> None:
        self._feature_set, self._source, self._late_tags = feature_set, source, dict(late_tags)

    def open(self, runtime_context: RuntimeContext) -> None:
        self._logic = EngagementLogic(self._feature_set, self._source)
        self._states = runtime_context.get_state(ValueStateDescriptor("windows", Types.PICKLED_BYTE_ARRAY()))
        names = tuple(
            f"{kind}_{f.name}" for f in self._logic.features for kind in ("late_dropped", "unencodable")
        )
        self._counters = Counters(runtime_context.get_metrics_group(), names)

    def process_element(self, value: Event, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        states = self._states.value() or {}
        step = self._logic.on_event(states, value, ctx.timer_service().current_watermark())
        yield from self._commit(states, step, value.item_id, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        states = self._states.value() or {}
        watermark = max(timestamp, ctx.timer_service().current_watermark())
        item_id = int(ctx.get_current_key())
        yield from self._commit(
            states, self._logic.on_watermark(states, watermark, item_id=item_id), item_id, ctx
        )

    def _commit(self, old: dict[str, Any], step: Step, item_id: int, ctx: Any) -> Iterator[Any]:
        if step.states:
            self._states.update(step.states)
        else:
            self._states.clear()
        # One timer per item, at its next due time: ``on_watermark`` then handles everything due by the
        # current watermark at once (a timer per due time would call Python once for each of them).
        due = self._logic.due_times_ms(step.states)
        if due and due[:1] != self._logic.due_times_ms(old)[:1]:
            ctx.timer_service().register_event_time_timer(due[0])
        key = encode_key(item_id).decode()
        for payload in step.deltas:
            yield Row(key, payload)
        for topic, record in step.lates:
            self._counters.inc(f"late_side_output_{_feature_of(record)}")
            yield self._late_tags[topic], Row(key, record)
        self._counters.add_all("late_dropped_", step.dropped)
        self._counters.add_all("unencodable_", step.unencodable)


def _feature_of(record: bytes) -> str:
    return str(json.loads(record)["feature"])


class EligibilityDeltas(MapFunction):
    """An attribute event (the item's full attribute set) → the item's ELIGIBILITY delta."""

    def __init__(self, feature_set: FeatureSet) -> None:
        self._feature_set = feature_set

    def open(self, runtime_context: RuntimeContext) -> None:
        self._logic = EligibilityLogic.of(self._feature_set)

    def map(self, value: Event) -> Row:
        return Row(encode_key(value.item_id).decode(), self._logic.delta(value))


class EmbedItems(KeyedProcessFunction):
    """New items, batched: keyed by a shard, buffered in ``ListState`` until ``batch_size`` items or ``linger_ms``.

    The buffer is Flink state, so a checkpoint never loses an item between arrival and its embedding.
    Each flush first checks (at most every ``model_poll_ms``) for a newer published model; a version that
    fails a compatibility check is counted and the active one kept. Without any model, items wait.
    """

    def __init__(
        self, feature_set: FeatureSet, models_dir: Path, batch_size: int, linger_ms: int, model_poll_ms: int
    ) -> None:
        self._feature_set, self._models_dir = feature_set, Path(models_dir)
        self._batch_size, self._linger_ms, self._model_poll_ms = batch_size, linger_ms, model_poll_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        self._logic = EmbeddingLogic.of(self._feature_set)
        self._watcher = ModelWatcher.of(self._feature_set, self._models_dir, self._model_poll_ms)
        self._pending = runtime_context.get_list_state(
            ListStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY())
        )
        self._count = runtime_context.get_state(ValueStateDescriptor("pending_count", Types.INT()))
        group = runtime_context.get_metrics_group()
        group.gauge("model_version", lambda: self._watcher.slot.version)
        self._counters = Counters(group, ("embedded",))
        self._rejected_seen: dict[str, int] = {}

    def process_element(self, value: Event, ctx: KeyedProcessFunction.Context) -> Iterator[Row]:
        self._pending.add(value)
        count = (self._count.value() or 0) + 1
        self._count.update(count)
        if count == 1:
            ctx.timer_service().register_processing_time_timer(
                ctx.timer_service().current_processing_time() + self._linger_ms
            )
        if count >= self._batch_size:
            yield from self._flush(ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Row]:
        yield from self._flush(ctx)

    def _flush(self, ctx: Any) -> Iterator[Row]:
        now_ms = ctx.timer_service().current_processing_time()
        self._watcher.poll(now_ms)
        self._count_rejections()
        model = self._watcher.active
        count = self._count.value() or 0
        if not count:
            return
        if model is None:  # items wait in state for the first compatible model
            ctx.timer_service().register_processing_time_timer(now_ms + self._model_poll_ms)
            return
        events = list(self._pending.get())
        self._pending.clear()
        self._count.clear()
        for start in range(0, len(events), self._batch_size):
            chunk = events[start : start + self._batch_size]
            for event, payload in zip(chunk, self._logic.deltas(model, chunk), strict=True):
                yield Row(encode_key(event.item_id).decode(), payload)
        self._counters.inc("embedded", len(events))

    def _count_rejections(self) -> None:
        for reason, total in self._watcher.rejected.items():
            new = total - self._rejected_seen.get(reason, 0)
            if new:
                self._counters.inc(f"model_rejected_{reason}", new)
                self._rejected_seen[reason] = total
