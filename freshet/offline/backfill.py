"""Backfill: the model the stream would have built from logged events, up to a watermark, in one pass.

``backfill`` reads each source's log (``freshet.offline.eventlog``) once, parses it as the job does and
stops where the source's watermark reaches ``until`` (``freshet.offline.sources``). From the same
``feature_defs`` it then computes, per item, what a replica holds at that point:

* each windowed feature's column (the job's ``EngagementLogic`` features): the newest firing under
  ``freshet.windows``' rules, vectorized (``freshet.offline.windowed``);
* the job's ELIGIBILITY cell (``EligibilityLogic``'s encoder) of the item's newest attribute event;
* the job's EMBEDDING delta (``EmbeddingLogic``) of the item's newest publish event, from the item tower
  of the named published model version, in batches of ``embed_batch`` items by ascending id.

Point in time: no value uses an event from after ``until``. Windows fire only once the watermark passed
their end; attribute and publish events timed after ``until`` are skipped (and counted). Among events of
one cell with equal versions the first to arrive wins, as on a replica.

The cells are applied to a fresh ``IndexModel`` as one columnar batch through its ordinary ``apply``, so
the result is a standard model for ``freshet.snapshot.write_snapshot``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from freshet.deltas import DecodedBatch, DeltaKind, decode_batch
from freshet.errors import FreshetError
from freshet.events import Event
from freshet.job_logic import EligibilityLogic, EmbeddingLogic, EngagementLogic, windowed_sources
from freshet.layout import REGION_ELIGIBILITY, TensorLayout
from freshet.model import IndexModel
from freshet.offline.columns import MEMO_LIMIT, WindowedColumns, memo_key
from freshet.offline.eventlog import log_bytes, read_values, topic_files
from freshet.offline.sources import Arrived, SourceReader, SourceStats
from freshet.offline.windowed import final_column
from freshet.publish import ModelError, PublishedModel, load_published, version_dir, versions
from freshet.spec import FeatureSet
from freshet.versions import eligibility_version, embedding_version

Ints = npt.NDArray[np.int64]
Consumer = Callable[[Sequence[Arrived]], None]
#: publish records embedded per forward pass of the item tower. The tower's float32 results depend on the
#: batch (CPU kernels block by batch size), so only ``embed_batch=1`` on both sides reproduces the job's
#: embeddings bit for bit (the job batches by arrival and time: ``--embed-batch-size 1`` makes it per item).
EMBED_BATCH = 1024


class BackfillError(FreshetError):
    """Backfill cannot run as asked (no such model version); the message says what to do."""


class Progress(Protocol):
    """Where backfill reports how far it is (the command line draws it with rich)."""

    def stage(self, description: str, total: int | None = None) -> None: ...
    def advance(self, amount: int) -> None: ...


class _Quiet:
    def stage(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


@dataclass
class BackfillResult:
    """The model backfill built, and what it counted on the way."""

    model: IndexModel
    until_ms: int | None
    sources: dict[str, SourceStats]
    #: per feature, events too late for every window (late side output or dropped, by its policy)
    too_late: dict[str, int] = field(default_factory=dict)
    #: per feature, items whose newest firing float32 cannot hold, recomputed by exact replay
    replayed: dict[str, int] = field(default_factory=dict)
    #: per source, attribute and publish events before the cut but timed after ``until``
    after_until: dict[str, int] = field(default_factory=dict)
    #: cells written, by kind
    cells: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready account of the run."""
        return {
            "until_ms": self.until_ms,
            "model_version": self.model.model_version,
            "items": len(self.model),
            "digest": self.model.digest(),
            "sources": {name: stats.to_dict() for name, stats in self.sources.items()},
            "too_late": self.too_late,
            "replayed_items": self.replayed,
            "after_until": self.after_until,
            "cells": self.cells,
        }


def backfill(
    feature_set: FeatureSet,
    events_dir: Path,
    until_ms: int | None,
    models_root: Path,
    *,
    model_version: int | None = None,
    embed_batch: int = EMBED_BATCH,
    progress: Progress | None = None,
) -> BackfillResult:
    """The model a replica holds once the stream logged in ``events_dir`` reached watermark ``until_ms``.

    ``until_ms=None`` is the end of the log, where a bounded job's last watermark fires every window.
    ``model_version`` names the published version that embeds items (default: the newest); ``embed_batch``
    is how many items it embeds per forward pass (see ``EMBED_BATCH``).
    """
    progress = progress or _Quiet()
    layout = feature_set.layout()
    published = load_model(feature_set, models_root, model_version)
    plan = _Plan.of(feature_set, until_ms)
    _check_log(feature_set, Path(events_dir), plan.consumers())
    sources = {
        name: _read_source(feature_set, name, Path(events_dir), until_ms, consumers, progress)
        for name, consumers in plan.consumers().items()
    }
    result = BackfillResult(IndexModel(layout, capacity=1), until_ms, sources)
    parts = [plan.embeddings.cells(layout, published, embed_batch, progress)]
    parts += [_feature_cells(columns, until_ms, result, progress) for columns in plan.windowed.values()]
    if plan.eligibility is not None:
        parts.append(plan.eligibility.cells(layout))
    result.after_until = {
        k.latest.source: k.latest.after_until for k in plan.stateless() if k.latest.after_until
    }
    result.cells = {part.kind.name.lower(): len(part) for part in parts}
    progress.stage("applying to the model")
    batch = _batch(layout, parts)
    items = int(np.unique(batch.item_id).shape[0])
    result.model = IndexModel(layout, capacity=max(1, items), model_version=published.version)
    result.model.apply(batch)
    return result


def load_model(feature_set: FeatureSet, models_root: Path, version: int | None) -> PublishedModel:
    """The published model that embeds items: ``version``, or the newest one."""
    name, layout = feature_set.embedding.model, feature_set.layout()
    found = versions(models_root, name)
    if not found:
        raise BackfillError(
            f"{models_root}: no published version of {name!r}; run `freshet model publish` first"
        )
    chosen = found[-1] if version is None else version
    if chosen not in found:
        raise BackfillError(f"{models_root}: {name!r} has no version {chosen} (published: {found})")
    try:
        path = version_dir(models_root, name, chosen)
        return load_published(path, layout_hash=layout.layout_hash, dim=layout.embedding_dim)
    except ModelError as exc:
        raise BackfillError(str(exc)) from exc


# ---------------------------------------------------------------- reading


def _check_log(feature_set: FeatureSet, events_dir: Path, sources: Mapping[str, object]) -> None:
    """Refuse a directory that holds no log of any source read (a wrong path would give an empty model)."""
    topics = [feature_set.source(name).topic for name in sources]
    if not any(topic_files(events_dir, topic) for topic in topics):
        raise BackfillError(f"{events_dir}: no *.jsonl or *.parquet under any of {', '.join(f'{t}/' for t in topics)}"
                            "; see freshet.offline.eventlog for the layout, `freshet feed` writes one")  # fmt: skip


def _read_source(
    feature_set: FeatureSet,
    source: str,
    events_dir: Path,
    until_ms: int | None,
    consumers: Sequence[Consumer],
    progress: Progress,
) -> SourceStats:
    reader = SourceReader(feature_set, source, until_ms)
    files = topic_files(events_dir, reader.stats.topic)
    progress.stage(f"reading {reader.stats.topic}", log_bytes(files))
    for arrived in reader.events(read_values(files, progress.advance)):
        for consume in consumers:
            consume(arrived)
    return reader.stats


@dataclass
class _Latest:
    """Per item, the newest event of a stateless region (the first to arrive among equal versions)."""

    source: str
    until_ms: int | None
    version_of: Callable[[int], int]
    #: what to keep of a winning event (the job's encoded delta, or the fields the tower reads)
    keep: Callable[[Event], Any]
    best: dict[int, tuple[int, Any]] = field(default_factory=dict)  # item -> (version, kept)
    after_until: int = 0

    def add(self, arrived: Sequence[Arrived]) -> None:
        for event, _ in arrived:
            if self.until_ms is not None and event.ts_ms > self.until_ms:
                self.after_until += 1
                continue
            version = self.version_of(event.ts_ms)
            current = self.best.get(event.item_id)
            if current is None or version > current[0]:
                self.best[event.item_id] = (version, self.keep(event))

    def winners(self) -> list[Any]:
        """What was kept of each item's newest event, by ascending item id."""
        return [self.best[item][1] for item in sorted(self.best)]

    def ids_and_versions(self) -> tuple[Ints, Ints]:
        """The items (ascending) and the versions of their newest events."""
        ids = sorted(self.best)
        return np.array(ids, dtype=np.int64), np.array([self.best[i][0] for i in ids], dtype=np.int64)


@dataclass
class _Eligibility:
    """The ELIGIBILITY cell of each item's newest attribute event: what the job's ``EligibilityLogic.delta``
    writes (its encoder's words, versioned by the event time), with the words memoized on the attributes
    the rules and Bloom fields read (there are few distinct ones)."""

    latest: _Latest

    @classmethod
    def of(cls, feature_set: FeatureSet, source: str, until_ms: int | None) -> _Eligibility:
        encoder = EligibilityLogic.of(feature_set).encoder
        read = _eligibility_fields(feature_set)
        memo: dict[tuple[object, ...], bytes] = {}

        def keep(event: Event) -> tuple[int, bytes]:
            key = tuple(memo_key(event.fields.get(name)) for name in read)
            words = memo.get(key)
            if words is None:
                words = encoder.words(event.fields).tobytes()
                if len(memo) < MEMO_LIMIT:
                    memo[key] = words
            return event.ts_ms, words

        return cls(_Latest(source, until_ms, eligibility_version, keep))

    def cells(self, layout: TensorLayout) -> _Cells:
        ids, versions_ = self.latest.ids_and_versions()
        kept: list[tuple[int, bytes]] = self.latest.winners()
        stamps = np.array([ts for ts, _ in kept], dtype=np.int64)
        words = np.frombuffer(b"".join(w for _, w in kept), dtype=np.int64).reshape(
            -1, layout.eligibility_words
        )
        regions = np.full(ids.shape, REGION_ELIGIBILITY, dtype=np.int64)
        return _Cells(DeltaKind.ELIGIBILITY, ids, regions, versions_, stamps, words.copy())


def _eligibility_fields(feature_set: FeatureSet) -> list[str]:
    """The attributes eligibility words depend on: those the exact-bit rules test, and the Bloom fields."""
    declared = feature_set.eligibility
    if declared is None:
        return []
    tested = {test.field for rule in declared.bits for _, test in rule.when.tests("")}
    return sorted(tested | {bloom.field for bloom in declared.bloom})


@dataclass
class _Embeddings:
    """The job's EMBEDDING deltas (``EmbeddingLogic``) of each item's newest publish event."""

    latest: _Latest
    logic: EmbeddingLogic

    @classmethod
    def of(cls, feature_set: FeatureSet, until_ms: int | None) -> _Embeddings:
        logic = EmbeddingLogic.of(feature_set)
        fields = logic.input_fields

        def keep(event: Event) -> Event:  # only what the tower reads
            return Event(event.source, event.item_id, event.ts_ms, {f: event.fields.get(f) for f in fields})

        return cls(_Latest(feature_set.embedding.source, until_ms, embedding_version, keep), logic)

    def cells(
        self, layout: TensorLayout, published: PublishedModel, batch: int, progress: Progress
    ) -> _Cells:
        events = self.latest.winners()
        progress.stage(f"embedding with {published.name} v{published.version}", len(events))
        records: list[bytes] = []
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            records += self.logic.deltas(published, chunk)
            progress.advance(len(chunk))
        return _Cells.decoded(records, DeltaKind.EMBEDDING, layout)


@dataclass
class _Plan:
    """Which sources feed which regions, and the collectors each source's events go to."""

    windowed: dict[str, WindowedColumns]
    eligibility: _Eligibility | None
    embeddings: _Embeddings

    @classmethod
    def of(cls, feature_set: FeatureSet, until_ms: int | None) -> _Plan:
        windowed = {
            s: WindowedColumns(EngagementLogic(feature_set, s).features)
            for s in windowed_sources(feature_set)
        }
        declared = feature_set.eligibility
        eligibility = None if declared is None else _Eligibility.of(feature_set, declared.source, until_ms)
        return cls(windowed, eligibility, _Embeddings.of(feature_set, until_ms))

    def stateless(self) -> list[_Eligibility | _Embeddings]:
        return [self.embeddings] if self.eligibility is None else [self.embeddings, self.eligibility]

    def consumers(self) -> dict[str, list[Consumer]]:
        """Per source to read, what its events feed."""
        out: dict[str, list[Consumer]] = {}
        for source, columns in self.windowed.items():
            out.setdefault(source, []).append(columns.add)
        for kind in self.stateless():
            out.setdefault(kind.latest.source, []).append(kind.latest.add)
        return out


# ---------------------------------------------------------------- cells and the batch


@dataclass(frozen=True)
class _Cells:
    """Deltas of one kind as columns: what ``DecodedBatch`` holds for that kind."""

    kind: DeltaKind
    item_ids: Ints
    regions: Ints
    versions: Ints
    event_time_ms: Ints
    values: npt.NDArray[Any]
    model_version: int = 0

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    @classmethod
    def decoded(cls, records: list[bytes], kind: DeltaKind, layout: TensorLayout) -> _Cells:
        """The cells of encoded deltas of one kind (the job's own records)."""
        batch = decode_batch(records, layout)
        if batch.rejected:  # the job's encoder checks what decoding checks: a bug if it ever shows
            raise BackfillError(
                f"{sum(batch.rejected.values())} {kind.name} deltas rejected: {batch.rejected}"
            )
        part = batch.kind_slice(kind)
        values: npt.NDArray[Any] = (
            batch.embeddings if kind is DeltaKind.EMBEDDING else batch.eligibility_words
        )
        model_version = int(batch.model_version[part][0]) if part.stop > part.start else 0
        return cls(kind, batch.item_id[part], batch.region[part], batch.version[part], batch.event_time_ms[part],
                   values, model_version)  # fmt: skip


def _feature_cells(
    columns: WindowedColumns, until_ms: int | None, result: BackfillResult, progress: Progress
) -> _Cells:
    """Every windowed feature of one source, column by column; counts go into ``result``."""
    progress.stage(f"windows of {len(columns):,} events", len(columns.features))
    parts = []
    for index, feature in enumerate(columns.features):
        computed = final_column(feature.operator.feature, columns.events(index), until_ms)
        result.too_late[feature.name] = computed.too_late
        if computed.replayed_items:
            result.replayed[feature.name] = computed.replayed_items
        c = computed.column
        parts.append((c.item_ids, np.full(len(c), feature.region), c.versions, c.event_time_ms, c.values))
        progress.advance(1)
    ids, regions, versions_, stamps, values = (np.concatenate(x) for x in zip(*parts, strict=True))
    return _Cells(DeltaKind.FEATURE, ids.astype(np.int64), regions.astype(np.int64), versions_.astype(np.int64),
                  stamps.astype(np.int64), values.astype(np.float32))  # fmt: skip


def _batch(layout: TensorLayout, parts: Sequence[_Cells]) -> DecodedBatch:
    """One batch of every cell, grouped by kind in enum order as ``DecodedBatch`` wants."""
    ordered = sorted(parts, key=lambda p: int(p.kind))

    def joined(name: str) -> Ints:
        arrays: list[Ints] = [getattr(p, name) for p in ordered]
        return np.concatenate(arrays).astype(np.int64)

    def values_of(kind: DeltaKind, shape: tuple[int, ...], dtype: type[np.generic]) -> npt.NDArray[Any]:
        found = [p.values for p in ordered if p.kind == kind]
        return np.concatenate(found).astype(dtype) if found else np.zeros(shape, dtype=dtype)

    n = sum(len(p) for p in ordered)
    return DecodedBatch(
        layout_hash=layout.layout_hash,
        kind=np.concatenate([np.full(len(p), int(p.kind), dtype=np.uint8) for p in ordered]),
        item_id=joined("item_ids"),
        region=joined("regions"),
        version=joined("versions"),
        event_time_ms=joined("event_time_ms"),
        model_version=np.concatenate([np.full(len(p), p.model_version, dtype=np.int64) for p in ordered]),
        source_index=np.arange(n, dtype=np.int64),
        embeddings=values_of(DeltaKind.EMBEDDING, (0, layout.embedding_dim), np.float32),
        feature_values=values_of(DeltaKind.FEATURE, (0,), np.float32),
        eligibility_words=values_of(DeltaKind.ELIGIBILITY, (0, layout.eligibility_words), np.int64),
    )
