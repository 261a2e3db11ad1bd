"""The full state of an ``IndexModel`` as plain arrays, and its order-independent digest.

``ModelState`` is what snapshots store and restore: every row up to the model's high-water mark (live,
waiting for an embedding, or free) plus the tombstones. ``state_digest`` hashes only what two converged
replicas must share — the contents of occupied rows, keyed and sorted by item id, and the tombstones — so it
does not depend on row order, capacity or history.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

#: bumped whenever what ``state_digest`` covers changes
DIGEST_VERSION = b"freshet-digest-1"


@dataclass(frozen=True, eq=False)
class ModelState:
    """Arrays of one model, rows ``[0, rows)``; the embedding keeps its storage dtype's bytes.

    ``item_embedding`` is float32 or float16, or uint16 holding bfloat16 bits (numpy has no bfloat16).
    """

    layout_hash: str
    model_version: int
    item_ids: npt.NDArray[np.int64]  # [rows]
    occupied: npt.NDArray[np.bool_]  # [rows] row holds an item (live or waiting for its embedding)
    valid: npt.NDArray[np.bool_]  # [rows] row holds an embedding: the item is retrievable
    item_embedding: npt.NDArray[Any]  # [rows, dim]
    features: npt.NDArray[np.float32]  # [rows, features]
    eligibility: npt.NDArray[np.int64]  # [rows, words]
    versions: npt.NDArray[np.int64]  # [rows, regions]
    tomb_ids: npt.NDArray[np.int64]  # [tombstones] deleted item ids
    tomb_versions: npt.NDArray[np.int64]  # [tombstones] version of each one's newest delete

    @property
    def rows(self) -> int:
        return int(self.item_ids.shape[0])

    def copy(self) -> ModelState:
        """A deep copy (the model hands out views of its buffers only under its lock)."""
        arrays = {f.name: np.array(getattr(self, f.name), copy=True) for f in _array_fields()}
        return ModelState(self.layout_hash, self.model_version, **arrays)


def _array_fields() -> list[Any]:
    return [f for f in fields(ModelState) if f.name not in ("layout_hash", "model_version")]


ARRAY_NAMES = tuple(f.name for f in _array_fields())


#: rows hashed per gather: sorting rows by id needs a gather, done a slice at a time to keep memory flat
DIGEST_CHUNK_ROWS = 65_536


def state_digest(state: ModelState) -> str:
    """sha256 over layout hash, model version, occupied rows sorted by item id, and sorted tombstones."""
    h = hashlib.sha256(DIGEST_VERSION)
    h.update(state.layout_hash.encode())
    h.update(np.int64(state.model_version).tobytes())
    rows = np.flatnonzero(state.occupied)
    rows = rows[np.argsort(state.item_ids[rows], kind="stable")]
    for name in ("item_ids", "valid", "item_embedding", "features", "eligibility", "versions"):
        _update(h, getattr(state, name), rows)
    order = np.argsort(state.tomb_ids, kind="stable")
    _update(h, state.tomb_ids, order)
    _update(h, state.tomb_versions, order)
    return h.hexdigest()


def _update(h: Any, array: npt.NDArray[Any], rows: npt.NDArray[np.intp]) -> None:
    """Hash ``array[rows]``: its shape, then its little-endian bytes, so no two sections can run together."""
    h.update(np.asarray((rows.shape[0], *array.shape[1:]), dtype="<i8").tobytes())
    little = array.dtype.newbyteorder("<")
    for start in range(0, rows.shape[0], DIGEST_CHUNK_ROWS):
        h.update(np.ascontiguousarray(array[rows[start : start + DIGEST_CHUNK_ROWS]], dtype=little).data)
