"""The replica: one index-as-model, the offsets of the delta topic it includes, its consumer and snapshots.

Concurrency. One thread writes (the consumer), many read (HTTP requests in the threadpool). Queries go
straight to the model, whose ``apply`` is atomic with respect to ``retrieve`` (DESIGN contract 4), so a
query never waits on this module's lock. ``_cut_lock`` pairs the model's state with the offsets it
includes: it is held while a batch is applied and its offsets recorded, and while a snapshot or the state
digest reads the model. A snapshot therefore is a consistent cut (contract 5); it pauses applying, not
querying.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from freshet.deltas import DecodedBatch, DeltaKind, decode_batch
from freshet.layout import TensorLayout
from freshet.model import IndexModel
from freshet.model_state import state_digest
from freshet.snapshot import Manifest
from serving.alignment import ReplicaAlignment
from serving.consumer import DeltaConsumer, DeltaSource, KafkaDeltaSource, PolledBatch
from serving.metrics import ReplicaMetrics
from serving.models import Generation, Generations, ModelRefusedError, ModelStore, ModelSwitchError, coverage
from serving.readahead import ReadAheadSource
from serving.settings import Settings
from serving.snapshots import PeriodicSnapshots, SnapshotStore

log = logging.getLogger(__name__)

_SIGNAL_OF_KIND = {
    int(DeltaKind.EMBEDDING): "embedding",
    int(DeltaKind.FEATURE): "feature",
    int(DeltaKind.ELIGIBILITY): "eligibility",
}


class _Decoded(NamedTuple):
    values: list[bytes]
    partition_of: Callable[[int], int]
    batch: DecodedBatch | None
    #: records left out before the codec's own count (null values, records no batch could decode), counted
    #: when the batch is applied: a batch decoded ahead and then split is decoded again, and counted once
    left_out: dict[str, int]


@dataclass(frozen=True)
class ReplicaState:
    """What ``GET /v1/state`` reports; taken as one consistent cut."""

    model_version: int
    layout_hash: str
    offsets: dict[int, int]
    digest: str
    items: int
    ready: bool
    #: the newest completed Flink checkpoint this state includes (``serving.alignment``), if known
    flink_checkpoint: str | None = None


@dataclass(frozen=True)
class ModelChange:
    """What ``switch_model`` / ``rollback_model`` did."""

    status: str  # "staged" (not switched: coverage below the minimum), "switched", "rolled_back"
    active_version: int
    standby_version: int | None
    coverage: float | None
    snapshot: Path | None


@dataclass(frozen=True)
class SnapshotTaken:
    path: Path
    offsets: dict[int, int]
    model_version: int
    digest: str
    items: int
    flink_checkpoint: str | None = None


class Replica:
    """Owns the model, the applied offsets, the delta consumer and the snapshot store."""

    def __init__(
        self,
        layout: TensorLayout,
        settings: Settings,
        *,
        source_factory: Callable[[], DeltaSource] | None = None,
        metrics: ReplicaMetrics | None = None,
        name: str | None = None,
    ) -> None:
        self.layout = layout
        self.settings = settings
        self.name = name or f"{settings.host}:{settings.port}"
        self.metrics = metrics or ReplicaMetrics()
        self._offsets: dict[int, int] = {}
        self._alignment = ReplicaAlignment(settings.checkpoint_dir)  # guarded by _cut_lock, like the offsets
        self._cut_lock = threading.Lock()
        self.models = ModelStore(settings.model_dir, layout)
        empty = Generation(IndexModel(layout, capacity=settings.initial_capacity), towers=None)
        self.generations = Generations(empty, self._cut_lock, self.models)
        self._snapshot_lock = threading.Lock()  # one snapshot at a time (periodic and admin)
        self._since_snapshot = 0
        self._last_snapshot_at = time.monotonic()
        self._newest_event_ms: int | None = None
        self.started_from: Path | None = None
        self.snapshots = SnapshotStore(
            settings.snapshot_dir,
            layout,
            topic=settings.delta_topic,
            retention=settings.snapshot_retention,
            metrics=self.metrics,
        )
        self.consumer = DeltaConsumer(
            source_factory or self._kafka_source,
            self.apply_records,
            self.offsets,
            self.metrics,
            batch_size=settings.poll_batch_size,
            replay_batch_size=settings.replay_batch_size,
            ready_max_lag=settings.ready_max_lag,
            name=self.name,
        )
        self._periodic = PeriodicSnapshots(self.snapshot_due, self.snapshot, self.metrics, name=self.name)
        self.metrics.bind(
            newest_event_age_s=self._newest_event_age_s,
            items=lambda: len(self.model),
            ready=lambda: float(self.ready),
            model_version=lambda: float(self.model.model_version),
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Replica:
        """Build a replica for ``settings.feature_defs``'s layout (reads the YAML; starts nothing)."""
        from freshet.spec import load_feature_set

        return cls(load_feature_set(settings.feature_defs).layout(), settings, **kwargs)

    def _kafka_source(self) -> DeltaSource:
        """A delta source of the configured client library (``settings.kafka_client``), read one batch ahead."""
        s = self.settings
        client_id = f"freshet-replica-{self.name}"
        source: DeltaSource
        if s.kafka_client == "confluent-kafka":
            from serving.confluent_source import ConfluentDeltaSource

            source = ConfluentDeltaSource(s.bootstrap_servers, s.delta_topic, client_id=client_id)
        else:
            source = KafkaDeltaSource(
                s.bootstrap_servers, s.delta_topic, client_id=client_id, max_poll_records=s.poll_batch_size
            )
        return ReadAheadSource(source, prepare=self.prepare) if s.read_ahead else source

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the newest valid snapshot, then start consuming (from its offsets) and snapshotting."""
        self.restore()
        self.consumer.start()
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
        self.consumer.stop()

    def restore(self) -> Manifest | None:
        """Start from the newest valid snapshot (and its model version), else from an empty index of the
        newest published model version that verifies (0 without one); returns the snapshot's manifest."""
        self.snapshots.remove_partial_writes()
        found = self.snapshots.load_newest_valid()
        if found is None:
            log.info("no valid snapshot under %s: replaying the delta topic from the beginning",
                     self.snapshots.root)  # fmt: skip
            towers = self.models.newest_loadable()
            version = towers.version if towers is not None else 0
            index = IndexModel(self.layout, capacity=self.settings.initial_capacity, model_version=version)
            self._install(Generation(index, towers), {})
            return None
        index, manifest, path = found
        version = manifest.model_version
        self._install(Generation(index, self.models.try_load(version) if version else None), manifest.offsets)
        with self._cut_lock:
            self._alignment.reset(manifest.flink_checkpoint)
        self.started_from = path
        return manifest

    def _install(self, generation: Generation, offsets: Mapping[int, int]) -> None:
        with self._cut_lock:
            self.generations.active = generation
            self._offsets = {int(p): int(o) for p, o in offsets.items()}
            self._last_snapshot_at = time.monotonic()

    # reading -------------------------------------------------------------------------------------
    @property
    def model(self) -> IndexModel:
        """The active index; take it once per request and use that object throughout."""
        return self.generations.active.index

    @property
    def generation(self) -> Generation:
        """The active generation (index and towers of one model version), taken as one reference."""
        return self.generations.active

    @property
    def ready(self) -> bool:
        return self.consumer.ready

    def offsets(self) -> dict[int, int]:
        """Partition -> next offset to apply (what a snapshot taken now would record)."""
        with self._cut_lock:
            return dict(self._offsets)

    def state(self) -> ReplicaState:
        with self._cut_lock:
            model = self.model
            candidates = self._alignment.candidates()
            state = ReplicaState(
                model_version=model.model_version,
                layout_hash=self.layout.layout_hash,
                offsets=dict(self._offsets),
                digest=model.digest(),
                items=len(model),
                ready=self.ready,
            )
        return replace(state, flink_checkpoint=self._alignment.name(candidates))

    def _newest_event_age_s(self) -> float:
        newest = self._newest_event_ms
        return float("nan") if newest is None else max(0.0, time.time() - newest / 1000)

    # applying ------------------------------------------------------------------------------------
    def apply_records(self, polled: PolledBatch, positions: Mapping[int, int]) -> None:
        """Decode and apply one polled batch, then record ``positions`` as the applied offsets.

        Bad records are counted by reason and skipped; they never stop the stream.
        """
        started = time.perf_counter()
        decoded = polled.prepared if isinstance(polled.prepared, _Decoded) else self.decode(polled)
        values, partition_of, batch, left_out = decoded
        for reason, n in left_out.items():
            self.metrics.rejected.labels(reason=reason).inc(n)
        with self._cut_lock:
            self._alignment.observe(batch, values, partition_of)
            applied, stale, rejected = self._apply(batch)
            self._offsets.update(positions)
            self._since_snapshot += len(polled)
        applied_ms = time.time() * 1000
        self._count(len(polled), applied, stale, rejected, batch, applied_ms)
        if len(polled):
            self.metrics.apply_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(polled))

    def prepare(self, polled: PolledBatch) -> None:
        """Decode ``polled`` ahead of ``apply_records`` (the read-ahead thread calls it: decoding needs only
        the layout, so it overlaps the previous batch's apply)."""
        polled.prepared = self.decode(polled)

    def decode(self, polled: PolledBatch) -> _Decoded:
        """The batch's non-null values, where each was read, their decoded deltas, and the records left out
        by reason (counted by ``apply_records``)."""
        values, partition_of = self._non_null(polled)
        left_out = {"null_value": len(polled) - len(values)}
        batch, left_out["undecodable"] = self._decode(values)
        return _Decoded(values, partition_of, batch, {k: n for k, n in left_out.items() if n})

    def _non_null(self, polled: PolledBatch) -> tuple[list[bytes], Callable[[int], int]]:
        """The values to decode and the partition each was read from."""
        if None not in polled.values:
            return cast(list[bytes], polled.values), polled.partition
        kept = [i for i, v in enumerate(polled.values) if v is not None]
        return [cast(bytes, polled.values[i]) for i in kept], lambda j: polled.partition(kept[j])

    def _decode(self, values: list[bytes]) -> tuple[DecodedBatch | None, int]:
        """The decoded batch and how many records no batch could decode (0 unless the codec failed)."""
        if not values:
            return None, 0
        # the batch's decode rejections are counted with the apply's (``ApplyStats.rejected`` holds both)
        try:
            return decode_batch(values, self.layout), 0
        except Exception as exc:  # the codec counts bad records itself; isolate them if it ever cannot
            log.warning("decoding a batch of %d records failed (%s); decoding one by one", len(values), exc)
            return self._decode_isolating(values)

    def _decode_isolating(self, values: list[bytes]) -> tuple[DecodedBatch | None, int]:
        kept = []
        for i, value in enumerate(values):
            try:
                decode_batch([value], self.layout)
            except Exception:
                continue
            kept.append(i)
        if not kept:
            return None, len(values)
        batch = decode_batch([values[i] for i in kept], self.layout)
        # marker positions are into the kept records: map them back to ``values``, where alignment reads them
        marker_index = np.asarray(kept, dtype=np.int64)[batch.marker_index]
        return replace(batch, marker_index=marker_index), len(values) - len(kept)

    def _apply(self, batch: DecodedBatch | None) -> tuple[int, int, dict[str, int]]:
        if batch is None:
            return 0, 0, {}
        if len(batch) == 0:
            return 0, 0, dict(batch.rejected)
        try:
            stats = self.generations.apply(batch)
        except Exception:
            log.exception("applying a decoded batch of %d deltas failed; the batch is skipped", len(batch))
            return 0, 0, {**batch.rejected, "apply_error": len(batch)}
        return stats.applied, stats.skipped_stale, dict(stats.rejected)

    def _count(
        self,
        n_records: int,
        applied: int,
        stale: int,
        rejected: Mapping[str, int],
        batch: DecodedBatch | None,
        applied_ms: float,
    ) -> None:
        m = self.metrics
        m.records.inc(n_records)
        m.applied.inc(applied)
        m.skipped_stale.inc(stale)
        m.count_rejected(dict(rejected))
        for p, o in self._offsets.items():
            m.applied_offset.labels(partition=str(p)).set(o)
        if batch is None or len(batch) == 0 or applied == 0:
            return
        event_ms = np.asarray(batch.event_time_ms, dtype=np.int64)
        newest = int(event_ms.max())
        if self._newest_event_ms is None or newest > self._newest_event_ms:
            self._newest_event_ms = newest
        if self.consumer.caught_up_once.is_set():  # a bootstrap replay is recovery time, not freshness
            self._observe_freshness(batch, event_ms, applied_ms)

    def _observe_freshness(
        self, batch: DecodedBatch, event_ms: npt.NDArray[np.int64], applied_ms: float
    ) -> None:
        """Applied wall time - event time, per signal; embeddings of another model version were not applied.

        (Deltas skipped as stale are observed too: the apply statistics do not say which rows they were.)
        """
        kinds = np.asarray(batch.kind)
        refused = (kinds == int(DeltaKind.EMBEDDING)) & (
            np.asarray(batch.model_version) != self.model.model_version
        )
        lag_s = (applied_ms - event_ms.astype(np.float64)) / 1000.0
        for kind, signal in _SIGNAL_OF_KIND.items():
            self.metrics.freshness.observe_many(signal, np.maximum(lag_s[(kinds == kind) & ~refused], 0.0))

    # snapshots -----------------------------------------------------------------------------------
    def snapshot_due(self) -> bool:
        """Periodic snapshots: once ready, every N seconds or N records, and only if something changed."""
        s = self.settings
        with self._cut_lock:
            # Records read since the last cut, not moved offsets: a position that only steps over a transaction
            # marker changes no tensor, and a snapshot for it would be a copy of the last one.
            since, last_at = self._since_snapshot, self._last_snapshot_at
        if not self.ready or since == 0:
            return False
        by_count = s.snapshot_every_deltas > 0 and since >= s.snapshot_every_deltas
        by_time = s.snapshot_every_s > 0 and time.monotonic() - last_at >= s.snapshot_every_s
        return by_count or by_time

    def snapshot(self) -> SnapshotTaken:
        """Write a snapshot now: the model and the offsets it includes, as one consistent cut.

        Applying pauses only while the state is copied; queries never pause; the write runs after.
        """
        with self._snapshot_lock:
            with self._cut_lock:
                model, offsets = self.model, dict(self._offsets)
                state = model.export_state()
                since = self._since_snapshot
                candidates = self._alignment.candidates()
            checkpoint = self._alignment.name(candidates)
            path = self.snapshots.write(state, offsets, checkpoint)
            taken = SnapshotTaken(path=path, offsets=offsets, model_version=state.model_version,
                                  digest=state_digest(state), items=int(state.valid.sum()),
                                  flink_checkpoint=checkpoint)  # fmt: skip
            with self._cut_lock:
                self._since_snapshot -= since
                self._last_snapshot_at = time.monotonic()
        log.info("snapshot %s written (%d items, offsets %s)", path, taken.items, offsets)
        return taken

    # model versions ------------------------------------------------------------------------------
    def switch_model(self, version: int | None = None, *, min_coverage: float = 0.0,
                     snapshot: bool = True) -> ModelChange:  # fmt: skip
        """Stage ``version`` (default: the newest published) and switch to it once its index holds at
        least ``min_coverage`` of the active one's retrievable items; then write a snapshot."""
        target = version if version is not None else self.models.newest()
        if target is None:
            raise ModelSwitchError(f"no published version of {self.models.name!r} under {self.models.root}")
        try:
            staged = self.generations.stage(target)
        except ModelRefusedError:
            self.metrics.model_refused.inc()
            raise
        covered = coverage(staged.index, self.model)
        if covered < min_coverage:
            return ModelChange("staged", self.model.model_version, target, covered, None)
        self.generations.switch()
        self.metrics.model_switches.labels(action="switch").inc()
        return self._after_change("switched", covered, snapshot)

    def rollback_model(self, *, snapshot: bool = True) -> ModelChange:
        """Back to the previous model version in one call (it kept receiving deltas); then a snapshot."""
        self.generations.rollback()
        self.metrics.model_switches.labels(action="rollback").inc()
        return self._after_change("rolled_back", None, snapshot)

    def _after_change(self, status: str, covered: float | None, snapshot: bool) -> ModelChange:
        standby = self.generations.standby
        path = self.snapshot().path if snapshot else None  # recovery must start on the version now active
        return ModelChange(
            status, self.model.model_version, standby.version if standby else None, covered, path
        )
