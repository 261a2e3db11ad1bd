"""Model versions on a replica: the published towers, the index each version serves, switch and rollback.

A *generation* is what one published model version serves: its towers (the query tower answers
``user`` queries) and an index whose embeddings all come from that version's item tower. The replica has
an active generation and at most one standby:

* ``stage(version)`` loads and verifies a published version (``freshet.publish.load_published``: checksums,
  layout hash, dims, parameter counts, no NaN/Inf) and builds its index beside the active one: features and
  eligibility carried over, embeddings empty, ``model_version`` = the new version. From then on every delta
  batch is applied to both indexes; each one keeps only embeddings of its own version (the core rejects the
  others as ``model_version_mismatch``), so the standby fills up as the Flink job, after its own tower swap,
  re-embeds the catalog with the new item tower.
* ``switch()`` makes the standby active by one reference assignment (a query takes the active generation
  once, so it never mixes versions); the old active becomes the standby and keeps receiving deltas, so
  ``rollback()`` is one call that loses nothing.

Standby generations live in memory only: after a restart the replica runs the version of the snapshot it
loaded. Take a snapshot after a switch (``POST /admin/model`` does) so that recovery starts on the new version.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freshet.deltas import DecodedBatch
from freshet.errors import FreshetError
from freshet.layout import REGION_EMBEDDING, TensorLayout
from freshet.model import ApplyStats, IndexModel
from freshet.model_state import ModelState
from freshet.publish import ModelError, PublishedModel, load_published, version_dir, versions

log = logging.getLogger(__name__)


class ModelSwitchError(FreshetError):
    """A model version cannot be staged, switched to or rolled back to; the active one is unchanged."""


class ModelRefusedError(ModelSwitchError):
    """A published model version failed verification (missing, checksum, layout hash, dims, NaN/Inf)."""


@dataclass(frozen=True, eq=False)
class Generation:
    """One model version as served: its index and, if published, its towers."""

    index: IndexModel
    towers: PublishedModel | None

    @property
    def version(self) -> int:
        return self.index.model_version


class ModelStore:
    """Published versions of the layout's embedding model under ``root`` (``freshet model publish``)."""

    def __init__(self, root: Path | None, layout: TensorLayout) -> None:
        self.root = root
        self.layout = layout
        self.name = layout.embedding_model

    def versions(self) -> list[int]:
        return versions(self.root, self.name) if self.root is not None else []

    def newest(self) -> int | None:
        found = self.versions()
        return found[-1] if found else None

    def load(self, version: int) -> PublishedModel:
        """The verified published ``version``; raises ``ModelRefusedError`` saying what failed."""
        if self.root is None:
            raise ModelSwitchError("no model directory configured: start the replica with --model-dir")
        path = version_dir(self.root, self.name, version)
        if not path.is_dir():
            found = ", ".join(f"v{v}" for v in self.versions()) or "none"
            raise ModelRefusedError(
                f"{path}: no published version {version} of {self.name!r} (published: {found})"
            )
        try:
            return load_published(path, layout_hash=self.layout.layout_hash, dim=self.layout.embedding_dim)
        except ModelError as exc:
            raise ModelRefusedError(f"refused model version {version}: {exc}") from exc

    def newest_loadable(self) -> PublishedModel | None:
        """The newest published version that passes verification; each refused one is logged."""
        for version in reversed(self.versions()):
            towers = self.try_load(version)
            if towers is not None:
                return towers
        return None

    def try_load(self, version: int) -> PublishedModel | None:
        """``load``, or ``None`` with the reason logged (a replica still serves embedding queries without)."""
        try:
            return self.load(version)
        except ModelSwitchError as exc:
            log.warning("model version %d: %s; queries by user features are unavailable", version, exc)
            return None


def carried_over(state: ModelState, model_version: int) -> ModelState:
    """The index of a new model version: every item's features and eligibility, no embeddings.

    Each row's embedding version goes back to the row's floor (its item's newest delete, else -1): the
    new item tower re-embeds items under the same version rule (their publish time), and those embeddings
    must not be skipped as stale against the old version's.
    """
    floor = np.full(state.rows, -1, dtype=np.int64)
    if state.tomb_ids.size:
        order = np.argsort(state.tomb_ids)
        ids, tomb_versions = state.tomb_ids[order], state.tomb_versions[order]
        at = np.clip(np.searchsorted(ids, state.item_ids), 0, ids.size - 1)
        deleted = state.occupied & (ids[at] == state.item_ids)
        floor[deleted] = tomb_versions[at][deleted]
    versions_ = state.versions.copy()
    versions_[:, REGION_EMBEDDING] = np.where(state.occupied, floor, -1)
    return ModelState(
        state.layout_hash, model_version, item_ids=state.item_ids.copy(), occupied=state.occupied.copy(),
        valid=np.zeros_like(state.valid), item_embedding=np.zeros_like(state.item_embedding),
        features=state.features.copy(), eligibility=state.eligibility.copy(), versions=versions_,
        tomb_ids=state.tomb_ids.copy(), tomb_versions=state.tomb_versions.copy(),
    )  # fmt: skip


def coverage(standby: IndexModel, active: IndexModel) -> float:
    """Retrievable items of ``standby`` per retrievable item of ``active`` (1.0 when ``active`` has none)."""
    return len(standby) / len(active) if len(active) else 1.0


class Generations:
    """The active generation and at most one standby (``staged``: newer, filling up; ``previous``: rollback).

    Every change happens under ``cut_lock``, the lock the replica holds while it applies a batch and records
    its offsets, so a standby never misses or doubles a batch. Queries read ``active`` without a lock.
    """

    def __init__(self, active: Generation, cut_lock: threading.Lock, store: ModelStore) -> None:
        self.active = active
        self.standby: Generation | None = None
        self.standby_role: str | None = None
        self._cut_lock = cut_lock
        self._store = store
        self._admin_lock = threading.Lock()  # one stage/switch/rollback at a time

    def apply(self, batch: DecodedBatch) -> ApplyStats:
        """Apply ``batch`` to the active index and the standby's (the caller holds ``cut_lock``)."""
        stats = self.active.index.apply(batch)
        if self.standby is not None:
            try:
                self.standby.index.apply(batch)
            except Exception:
                log.exception("the standby index (version %d) failed to apply a batch", self.standby.version)
        return stats

    def stage(self, version: int) -> Generation:
        """Load, verify and build ``version`` beside the active one (idempotent for the staged version)."""
        with self._admin_lock:
            if version == self.active.version:
                raise ModelSwitchError(f"model version {version} is already active")
            if self.standby is not None and self.standby.version == version:
                return self.standby
            towers = self._store.load(version)
            with self._cut_lock:  # the standby starts at the cut: it sees every batch after it
                state = carried_over(self.active.index.export_state(), version)
                self.standby = Generation(IndexModel.from_state(self.active.index.layout, state), towers)
                self.standby_role = "staged"
            log.info("staged model version %d beside the active %d", version, self.active.version)
            return self.standby

    def switch(self) -> Generation:
        """Make the standby active (one reference assignment); the old active becomes the standby."""
        with self._admin_lock, self._cut_lock:
            if self.standby is None:
                raise ModelSwitchError("no staged model version to switch to")
            self.active, self.standby = self.standby, self.active
            self.standby_role = "previous"
            log.info("switched to model version %d (previous %d)", self.active.version, self.standby.version)
            return self.active

    def rollback(self) -> Generation:
        """Back to the previous version in one call; the version rolled back from stays staged."""
        with self._admin_lock, self._cut_lock:
            if self.standby is None or self.standby_role != "previous":
                raise ModelSwitchError("no previous model version to roll back to")
            self.active, self.standby = self.standby, self.active
            self.standby_role = "staged"
            log.info("rolled back to model version %d", self.active.version)
            return self.active
