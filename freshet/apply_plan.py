"""What one batch of deltas changes, computed with numpy before any tensor is touched.

The rule (DESIGN contract 2, extended to deletes): the state of a (item, region) cell is the delta of the
highest version among those newer than the item's newest tombstone, else the region's default at the
tombstone's version (``-1``: never written). Applying deltas in any order, any number of times, reaches the
same state:

* an update applies only if its version is above both the cell's version and the item's tombstone;
* a tombstone newer than the item's last one resets every cell at or below its version to the default and
  stamps the tombstone's version on it, so an older delta replayed after the delete never resurrects the
  item. A row whose every cell was reset is freed (and reused later); the tombstone's version stays in the
  tombstone map. Cells newer than the delete (a re-publish that arrived first) survive it.

An item is retrievable (``valid``) while its embedding cell holds an embedding. Within a batch, the highest
version wins per cell and the first in input order wins among equal versions, as it would across batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from freshet.deltas import DecodedBatch, DeltaKind
from freshet.intmap import IntMap

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class ApplyPlan:
    """Everything the commit writes, in the order it writes it."""

    new_ids: Ints  # items that get a row, ...
    new_rows: Ints  # ... the rows they get, ...
    new_floor: Ints  # ... and the version every cell of it starts at (their tombstone, or -1)
    reset_rows: Ints  # cells a delete sets back to their default ...
    reset_regions: Ints
    reset_versions: Ints  # ... stamped with the delete's version
    freed_ids: Ints  # items whose every cell was reset: their rows go back to the free list
    freed_rows: Ints
    tomb_ids: Ints  # tombstones raised by this batch
    tomb_versions: Ints
    winners: dict[DeltaKind, tuple[Ints, Ints]]  # kind -> (rows, batch positions) of the updates that apply
    applied: int
    skipped_stale: int


def plan_batch(
    batch: DecodedBatch, rows_of: IntMap, tombs: IntMap, versions: Ints, allocate: Callable[[int], Ints]
) -> ApplyPlan:
    """Plan ``batch`` against the current row map, tombstones and ``versions`` [rows, regions]."""
    uids, inv = np.unique(batch.item_id, return_inverse=True)
    rows = rows_of.get(uids)
    tomb_old = tombs.get(uids) if len(tombs) else np.full(uids.shape[0], -1, dtype=np.int64)
    tomb_new = _newest_tombstones(batch, inv, tomb_old)
    won = _winning_updates(batch, inv, rows, tomb_new, versions)
    has_winner = np.zeros(uids.shape[0], dtype=bool)
    has_winner[inv[won]] = True
    raised = np.flatnonzero(tomb_new > tomb_old)
    resets, freed_u = _resets(raised[rows[raised] >= 0], rows, tomb_new, versions, has_winner)
    new_u = np.flatnonzero(has_winner & (rows < 0))
    rows[new_u] = allocate(new_u.shape[0])
    winners = {kind: _of_kind(batch, kind, won, rows[inv[won]]) for kind in _UPDATE_KINDS}
    applied = won.shape[0] + raised.shape[0]
    return ApplyPlan(
        uids[new_u], rows[new_u], tomb_new[new_u], *resets, uids[freed_u], rows[freed_u],
        uids[raised], tomb_new[raised], winners, applied=applied, skipped_stale=len(batch) - applied,
    )  # fmt: skip


_UPDATE_KINDS = (DeltaKind.EMBEDDING, DeltaKind.FEATURE, DeltaKind.ELIGIBILITY)


def _newest_tombstones(batch: DecodedBatch, inv: Ints, tomb_old: Ints) -> Ints:
    """Per unique item: the newest of its known tombstone and the batch's tombstones."""
    tomb_new = tomb_old.copy()
    deletes = batch.kind == DeltaKind.TOMBSTONE
    np.maximum.at(tomb_new, inv[deletes], batch.version[deletes])
    return tomb_new


def _winning_updates(batch: DecodedBatch, inv: Ints, rows: Ints, tomb_new: Ints, versions: Ints) -> Ints:
    """Batch positions of the updates that apply: newest per cell, and newer than the cell and the tombstone."""
    updates = np.flatnonzero(batch.kind != DeltaKind.TOMBSTONE)
    u, region, version = inv[updates], batch.region[updates], batch.version[updates]
    cell = u * versions.shape[1] + region
    order = np.lexsort((-version, cell))  # per cell: newest first; stable, so first in input among equals
    first = order[np.r_[True, cell[order][1:] != cell[order][:-1]]] if order.size else order
    row, current = rows[u[first]], np.full(first.shape[0], -1, dtype=np.int64)
    known = row >= 0
    current[known] = versions[row[known], region[first][known]]
    keep = version[first] > np.maximum(current, tomb_new[u[first]])
    return np.sort(updates[first[keep]])


def _resets(
    deleted: Ints, rows: Ints, tomb_new: Ints, versions: Ints, has_winner: npt.NDArray[np.bool_]
) -> tuple[tuple[Ints, Ints, Ints], Ints]:
    """The cells that newly raised tombstones reset on existing rows, and the items left with no cell at all."""
    cleared = versions[rows[deleted]] <= tomb_new[deleted, None]
    which, region = np.nonzero(cleared)
    freed = deleted[cleared.all(axis=1) & ~has_winner[deleted]]
    return (rows[deleted][which], region.astype(np.int64), tomb_new[deleted][which]), freed


def _of_kind(batch: DecodedBatch, kind: DeltaKind, won: Ints, won_rows: Ints) -> tuple[Ints, Ints]:
    chosen = batch.kind[won] == kind
    return won_rows[chosen], won[chosen]
