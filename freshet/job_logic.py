"""What the delta job does with each source's events, pure: raw bytes in, encoded tensor deltas out.

The Flink functions in ``flink_jobs`` only move state in and out of Flink and call these; tests and
backfill call them directly. Nothing here reads a clock or touches Kafka or Flink.

* ``EventParser``: a source's raw bytes → ``Event`` or ``Rejected`` (the dead-letter record).
* ``EngagementLogic``: the windowed features of one source, one ``WindowOperator`` each, over one
  item's states. A ``Fire`` becomes an absolute FEATURE delta whose version is ``version_for(fire)``
  (the firings of one step that share a version: one FEATURES record, ``encode_firings``); a too-late
  event becomes a side-output record (policy ``side_output``) or a count (``update``, ``drop``).
* ``EligibilityLogic``: an attribute event → the item's ELIGIBILITY delta. Each attribute event is
  the item's **full** attribute set at its event time (not a patch), so the delta is stateless and
  absolute, versioned by the event time: the newest event wins on every replica.
* ``EmbeddingLogic`` and ``ModelWatcher``: new items → EMBEDDING deltas from the item tower of the
  newest compatible published model, stamped with that model's version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from freshet.deltas import Delta, DeltaKind, encode_delta, encode_features
from freshet.eligibility import EligibilityEncoder
from freshet.events import Event, FieldKind, Rejected, parse_event
from freshet.layout import REGION_ELIGIBILITY, REGION_EMBEDDING, TensorLayout
from freshet.publish import ModelSlot, PublishedModel, version_dir, versions
from freshet.versions import eligibility_version, embedding_version
from freshet.windows import (
    Fire,
    Late,
    Output,
    WindowedAggregate,
    WindowOperator,
    WindowState,
    version_for,
)
from freshet.wire import features_record_bytes

if TYPE_CHECKING:
    from freshet.aggregators import Value
    from freshet.spec import Feature, FeatureSet
    from freshet.spec.predicates import Predicate

States = dict[str, WindowState]
"""One item's window states, by feature name; a feature with no open window is absent."""


@dataclass(frozen=True)
class EventParser:
    """Parses the raw records of one declared source (its key, event-time field and ``fields``)."""

    source: str
    key_field: str
    time_field: str
    required: Mapping[str, FieldKind]

    @classmethod
    def of(cls, feature_set: FeatureSet, source: str) -> EventParser:
        declared = feature_set.source(source)
        return cls(source, feature_set.entity.key, declared.event_time, dict(declared.fields))

    def __call__(self, raw: bytes) -> Event | Rejected:
        """``parse_event`` with this source's declarations."""
        return parse_event(
            raw,
            source=self.source,
            key_field=self.key_field,
            time_field=self.time_field,
            required=self.required,
        )


def windowed_sources(feature_set: FeatureSet) -> list[str]:
    """Sources that have windowed features, in declaration order.

    >>> from freshet.spec import load_feature_set
    >>> windowed_sources(load_feature_set(Path(__file__).parent.parent / "feature_defs"))
    ['engagement']
    """
    return list(dict.fromkeys(f.source for f in feature_set.features))


class Step(NamedTuple):
    """What one event or watermark did to one item: its new states and what to emit and count."""

    states: States
    #: encoded FEATURE deltas and FEATURES records (``encode_firings``), in the order the windows fired
    deltas: list[bytes]
    #: ``(topic, record)`` for each too-late event of a ``side_output`` feature
    lates: list[tuple[str, bytes]]
    #: too-late events dropped (policies ``update`` and ``drop``), by feature
    dropped: dict[str, int]
    #: firings whose value cannot be a delta (e.g. beyond float32), skipped and counted by feature
    unencodable: dict[str, int]


@dataclass(frozen=True)
class WindowedFeature:
    """One declared windowed feature: its operator, which events it takes, and where its results go."""

    name: str
    operator: WindowOperator
    region: int
    filter: Predicate | None
    field: str | None
    late_topic: str | None

    @classmethod
    def of(cls, feature: Feature, layout: TensorLayout) -> WindowedFeature:
        return cls(
            feature.name,
            WindowOperator(WindowedAggregate.from_feature(feature)),
            layout.feature_region(feature.name),
            feature.filter,
            feature.field,
            feature.late.topic,
        )

    def value_of(self, event: Event) -> Value | None:
        """The value this feature aggregates from ``event``, or ``None`` if its filter rejects it."""
        if self.filter is not None and not self.filter.matches(event.fields):
            return None
        if self.field is None:  # count: the value is not read
            return 1
        value: Value = event.fields[self.field]
        return value


class EngagementLogic:
    """The windowed features of one source over one item: ``on_event``, ``on_watermark``, ``due_times_ms``.

    Like ``WindowOperator``, methods never change the states passed in. Every feature sees every
    watermark (a feature whose filter rejects an event still advances), so firings do not depend
    on which events a feature takes.
    """

    def __init__(self, feature_set: FeatureSet, source: str | None = None) -> None:
        if source is None:
            sources = windowed_sources(feature_set)
            if len(sources) != 1:
                raise ValueError(f"name the source: features are windowed over {sources}")
            source = sources[0]
        self.source = source
        self.layout = feature_set.layout()
        self.features = tuple(
            WindowedFeature.of(f, self.layout) for f in feature_set.features if f.source == source
        )
        if not self.features:
            raise ValueError(f"source {source!r} has no windowed features")

    def initial_states(self) -> States:
        """No open window for any feature."""
        return {}

    def on_event(self, states: States, event: Event, watermark_ms: int) -> Step:
        """``event`` arrives while the watermark is ``watermark_ms``."""
        return self._step(states, event.item_id, event, watermark_ms)

    def on_watermark(self, states: States, watermark_ms: int, *, item_id: int) -> Step:
        """The watermark advanced to ``watermark_ms``: fire and clear what it passed for ``item_id``."""
        return self._step(states, item_id, None, watermark_ms)

    def due_times_ms(self, states: States) -> list[int]:
        """Watermarks at which ``on_watermark`` acts on ``states`` (for event-time timers)."""
        due = {t for f in self.features if f.name in states for t in f.operator.due_times_ms(states[f.name])}
        return sorted(due)

    def _step(self, states: States, item_id: int, event: Event | None, watermark_ms: int) -> Step:
        step = Step({}, [], [], {}, {})
        firings: list[tuple[int, Fire]] = []
        for feature in self.features:
            state = states.get(feature.name) or feature.operator.initial_state()
            value = None if event is None else feature.value_of(event)
            if event is not None and value is not None:
                state, outputs = feature.operator.on_event(state, event.ts_ms, value, watermark_ms)
            else:
                state, outputs = feature.operator.on_watermark(state, watermark_ms)
            if state:
                step.states[feature.name] = state
            for output in outputs:
                self._emit(step, firings, feature, event, output)
        step.deltas.extend(encode_firings(self.layout, item_id, firings))
        return step

    def _emit(
        self,
        step: Step,
        firings: list[tuple[int, Fire]],
        feature: WindowedFeature,
        event: Event | None,
        output: Output,
    ) -> None:
        if isinstance(output, Fire):
            with np.errstate(over="ignore"):  # beyond float32: infinite
                encodable = bool(np.isfinite(np.float32(output.value)))
            if encodable:
                firings.append((feature.region, output))
            else:
                _count(step.unencodable, feature.name)
        elif isinstance(output, Late) and feature.late_topic is not None:
            assert event is not None  # only an arriving event is ever late
            step.lates.append((feature.late_topic, late_record(feature.name, event, output)))
        else:
            _count(step.dropped, feature.name)


def _count(counts: dict[str, int], name: str) -> None:
    counts[name] = counts.get(name, 0) + 1


def encode_firings(layout: TensorLayout, item_id: int, firings: Sequence[tuple[int, Fire]]) -> list[bytes]:
    """The records of one step's firings ``(region, fire)`` of one item, in firing order: one per version, in
    the order each version first fired; a version one feature fired is its FEATURE delta, one several fired
    is a FEATURES record of all their values (their windows end together: one version, one event time).
    Layouts without FEATURES records (over 64 feature columns) get a FEATURE delta per firing.

    The JVM window operator groups the same way, byte for byte (``dev.freshet.flink.EngagementLogic``).
    """
    if features_record_bytes(layout) is None:
        return [feature_delta(layout, region, item_id, fire) for region, fire in firings]
    groups: dict[int, list[tuple[int, Fire]]] = {}
    for region, fire in firings:
        groups.setdefault(version_for(fire), []).append((region, fire))
    records = []
    for version, group in groups.items():
        if len(group) == 1:
            region, fire = group[0]
            records.append(feature_delta(layout, region, item_id, fire))
            continue
        values = {region: float(np.float32(fire.value)) for region, fire in group}
        records.append(encode_features(item_id, version, group[0][1].event_time_ms, values, layout))
    return records


def feature_delta(layout: TensorLayout, region: int, item_id: int, fire: Fire) -> bytes:
    """The encoded FEATURE delta of one firing: absolute value, versioned by window end and firing."""
    with np.errstate(over="ignore"):  # beyond float32: infinite, refused by encode_delta below
        values = np.array([fire.value], dtype=np.float32)
    delta = Delta(DeltaKind.FEATURE, item_id, region, version_for(fire), fire.event_time_ms, values)
    return encode_delta(delta, layout)


def late_record(feature: str, event: Event, late: Late) -> bytes:
    """The side-output record of a too-late event: the feature, why, and the event as parsed.

    >>> from freshet.events import Event
    >>> rec = late_record("views_10m", Event("engagement", 7, 1000, {"item_id": 7, "ts": 1000}), Late("late: x", 1000, 1, 5000))
    >>> json.loads(rec)["reason"], json.loads(rec)["event"]["item_id"]
    ('late: x', 7)
    """
    return json.dumps(
        {
            "feature": feature,
            "source": event.source,
            "item_id": event.item_id,
            "event_ts_ms": late.event_ts_ms,
            "watermark_ms": late.watermark_ms,
            "reason": late.reason,
            "event": dict(event.fields),
        },
        separators=(",", ":"),
    ).encode()


@dataclass(frozen=True)
class EligibilityLogic:
    """Attribute events → ELIGIBILITY deltas. Each event is the item's full attribute set at its time."""

    encoder: EligibilityEncoder

    @classmethod
    def of(cls, feature_set: FeatureSet) -> EligibilityLogic:
        return cls(EligibilityEncoder.of(feature_set))

    def delta(self, event: Event) -> bytes:
        """The item's eligibility words from ``event``'s attributes, versioned by its event time."""
        words = self.encoder.words(event.fields)
        delta = Delta(
            DeltaKind.ELIGIBILITY, event.item_id, REGION_ELIGIBILITY, eligibility_version(event.ts_ms),
            event.ts_ms, words,
        )  # fmt: skip
        return encode_delta(delta, self.encoder.layout)


@dataclass(frozen=True)
class EmbeddingLogic:
    """New-item events → EMBEDDING deltas from a published model's item tower, in one batched pass."""

    layout: TensorLayout
    input_fields: tuple[str, ...]

    @classmethod
    def of(cls, feature_set: FeatureSet) -> EmbeddingLogic:
        return cls(feature_set.layout(), tuple(feature_set.embedding.input_fields))

    def deltas(self, model: PublishedModel, events: Sequence[Event]) -> list[bytes]:
        """One delta per event, values from ``model.item_tower`` on the declared input fields."""
        if not events:
            return []
        records = [{name: e.fields.get(name) for name in self.input_fields} for e in events]
        vectors = model.item_tower.embed(records).numpy()
        return [self._delta(e, vector, model.version) for e, vector in zip(events, vectors, strict=True)]

    def _delta(self, event: Event, vector: npt.NDArray[np.float32], model_version: int) -> bytes:
        version = embedding_version(event.ts_ms)
        delta = Delta(
            DeltaKind.EMBEDDING, event.item_id, REGION_EMBEDDING, version, event.ts_ms, vector, model_version
        )
        return encode_delta(delta, self.layout)


@dataclass
class ModelWatcher:
    """The newest compatible published version of one model, checked for at most every ``poll_interval_ms``.

    A version that fails a check (``ModelSlot.try_load`` counts why in ``rejected``) is not tried again;
    the active one stays. ``poll`` takes the time from the caller.
    """

    root: Path
    name: str
    layout_hash: str
    dim: int
    poll_interval_ms: int = 5_000
    slot: ModelSlot = field(default_factory=ModelSlot)
    _refused: set[int] = field(default_factory=set)
    _last_poll_ms: int | None = None

    @classmethod
    def of(cls, feature_set: FeatureSet, root: Path, poll_interval_ms: int = 5_000) -> ModelWatcher:
        layout = feature_set.layout()
        return cls(
            Path(root),
            feature_set.embedding.model,
            layout.layout_hash,
            layout.embedding_dim,
            poll_interval_ms,
        )

    @property
    def active(self) -> PublishedModel | None:
        return self.slot.active

    @property
    def rejected(self) -> dict[str, int]:
        return self.slot.rejected

    def poll(self, now_ms: int) -> bool:
        """Load the newest published version if it is new and due; returns whether the active one changed."""
        if self._last_poll_ms is not None and now_ms - self._last_poll_ms < self.poll_interval_ms:
            return False
        self._last_poll_ms = now_ms
        newest = max(versions(self.root, self.name), default=0)
        if newest <= self.slot.version or newest in self._refused:
            return False
        path = version_dir(self.root, self.name, newest)
        if self.slot.try_load(path, layout_hash=self.layout_hash, dim=self.dim):
            return True
        self._refused.add(newest)
        return False
