"""The tensors of an ``IndexModel`` and the scatters that change them (callers hold the model's locks).

``Buffers`` groups the tensors so that growth and restore can build a whole new set beside the live one and
swap it in at once. ``Writes`` is a planned batch converted to the storage dtypes before the exclusive
section, so that section only scatters.

The scatters go through numpy views of the tensors (same memory): torch parallelizes even a 10k-row
index_put over its intra-op threads, and on a machine whose cores are busy (queries run beside apply) the
thread hand-off costs milliseconds per op, measured 1.5-8 ms against 0.04-0.2 ms single-threaded.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from freshet.apply_plan import ApplyPlan
from freshet.deltas import DecodedBatch, DeltaKind
from freshet.errors import FreshetError
from freshet.intmap import IntMap
from freshet.layout import REGION_ELIGIBILITY, REGION_EMBEDDING, REGION_FIRST_FEATURE, TensorLayout
from freshet.model_state import ModelState
from freshet.retrieval import feature_scores

Ints = npt.NDArray[np.int64]
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: how each embedding dtype is held in numpy (bfloat16 as its raw bits)
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
}


class ModelStateError(FreshetError):
    """A model state does not fit the layout or is inconsistent; nothing was changed."""


@dataclass(frozen=True, eq=False)
class Buffers:
    item_embedding: torch.Tensor
    features: torch.Tensor
    eligibility: torch.Tensor
    versions: torch.Tensor
    valid: torch.Tensor
    occupied: torch.Tensor
    item_ids: torch.Tensor
    score_bias: torch.Tensor

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(Buffers))

    @classmethod
    def empty(cls, layout: TensorLayout, capacity: int) -> Buffers:
        defaults = _defaults(layout)
        return cls(
            item_embedding=torch.zeros(
                capacity, layout.embedding_dim, dtype=TORCH_DTYPES[layout.embedding_dtype]
            ),
            features=torch.from_numpy(np.tile(defaults, (capacity, 1))),
            eligibility=torch.zeros(capacity, layout.eligibility_words, dtype=torch.int64),
            versions=torch.full((capacity, layout.num_regions), -1, dtype=torch.int64),
            valid=torch.zeros(capacity, dtype=torch.bool),
            occupied=torch.zeros(capacity, dtype=torch.bool),
            item_ids=torch.zeros(capacity, dtype=torch.int64),
            score_bias=torch.full((capacity,), float("-inf"), dtype=torch.float32),
        )

    def copy_rows_from(self, other: Buffers, rows: int) -> None:
        for name in self.names():
            as_numpy(getattr(self, name))[:rows] = as_numpy(getattr(other, name))[:rows]

    def occupy(self, rows: Ints, ids: Ints, floor: Ints, layout: TensorLayout) -> None:
        """Give ``rows`` to new items: default contents, every cell at version ``floor``, not yet valid."""
        as_numpy(self.item_embedding)[rows] = 0
        self.features.numpy()[rows] = _defaults(layout)
        self.eligibility.numpy()[rows] = 0
        self.versions.numpy()[rows] = floor[:, None]
        self.valid.numpy()[rows] = False
        self.occupied.numpy()[rows] = True
        self.item_ids.numpy()[rows] = ids

    def reset(self, rows: Ints, regions: Ints, versions: Ints, layout: TensorLayout) -> None:
        """Set cells back to their defaults at the given (tombstone) versions."""
        self.versions.numpy()[rows, regions] = versions
        embedding_rows = rows[regions == REGION_EMBEDDING]
        as_numpy(self.item_embedding)[embedding_rows] = 0
        self.valid.numpy()[embedding_rows] = False
        self.eligibility.numpy()[rows[regions == REGION_ELIGIBILITY]] = 0
        is_feature = regions >= REGION_FIRST_FEATURE
        columns = regions[is_feature] - REGION_FIRST_FEATURE
        self.features.numpy()[rows[is_feature], columns] = _defaults(layout)[columns]

    def free(self, rows: Ints) -> None:
        """Return rows whose every cell was reset to the free list."""
        self.occupied.numpy()[rows] = False
        self.versions.numpy()[rows] = -1
        self.item_ids.numpy()[rows] = 0

    def refresh_scores(self, rows: Ints, layout: TensorLayout) -> None:
        """Recompute the score bias of ``rows`` (after their features or validity changed)."""
        bias = feature_scores(layout, self.features.numpy()[rows], self.valid.numpy()[rows])
        self.score_bias.numpy()[rows] = bias


def as_numpy(tensor: torch.Tensor) -> npt.NDArray[Any]:
    """A numpy view of ``tensor``'s memory; bfloat16 (which numpy lacks) as its uint16 bits."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def to_storage(values: npt.NDArray[np.float32], dtype: str) -> npt.NDArray[Any]:
    """float32 embeddings in the storage dtype's numpy form, rounded to nearest even like torch.

    >>> to_storage(np.array([1.0, 1.00390625, 3.0e38], np.float32), "bfloat16").tolist()
    [16256, 16256, 32610]
    """
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        return (rounded >> np.uint32(16)).astype(np.uint16)
    return values.astype(NUMPY_DTYPES[dtype])


def _defaults(layout: TensorLayout) -> npt.NDArray[np.float32]:
    return np.array([c.default for c in layout.feature_columns], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Writes:
    """The winning updates of a plan: rows and values per kind, and their (row, region) versions."""

    embedding_rows: Ints
    embeddings: npt.NDArray[Any]  # in the storage dtype
    feature_rows: Ints
    feature_columns: Ints
    feature_values: npt.NDArray[np.float32]
    eligibility_rows: Ints
    eligibility_words: Ints
    cell_rows: Ints
    cell_regions: Ints
    cell_versions: Ints

    @classmethod
    def of(cls, plan: ApplyPlan, batch: DecodedBatch, layout: TensorLayout) -> Writes:
        (e_rows, e_pos), (f_rows, f_pos), (l_rows, l_pos) = (plan.winners[k] for k in _UPDATE_KINDS)
        positions = np.concatenate([e_pos, f_pos, l_pos])
        return cls(
            e_rows,
            to_storage(
                batch.embeddings[e_pos - batch.kind_slice(DeltaKind.EMBEDDING).start], layout.embedding_dtype
            ),
            f_rows,
            batch.region[f_pos] - REGION_FIRST_FEATURE,
            batch.feature_values[f_pos - batch.kind_slice(DeltaKind.FEATURE).start],
            l_rows,
            batch.eligibility_words[l_pos - batch.kind_slice(DeltaKind.ELIGIBILITY).start],
            np.concatenate([e_rows, f_rows, l_rows]),
            batch.region[positions],
            batch.version[positions],
        )

    def scatter(self, buffers: Buffers) -> None:
        as_numpy(buffers.item_embedding)[self.embedding_rows] = self.embeddings
        buffers.valid.numpy()[self.embedding_rows] = True
        buffers.features.numpy()[self.feature_rows, self.feature_columns] = self.feature_values
        buffers.eligibility.numpy()[self.eligibility_rows] = self.eligibility_words
        buffers.versions.numpy()[self.cell_rows, self.cell_regions] = self.cell_versions


_UPDATE_KINDS = (DeltaKind.EMBEDDING, DeltaKind.FEATURE, DeltaKind.ELIGIBILITY)


# ---------------------------------------------------------------- state in and out


def view_state(
    buffers: Buffers, rows: int, tombs: IntMap, layout: TensorLayout, model_version: int
) -> ModelState:
    """Numpy views of rows ``[0, rows)`` (no copy: valid only while the caller holds the writer mutex)."""
    tomb_ids, tomb_versions = tombs.arrays()
    return ModelState(
        layout_hash=layout.layout_hash,
        model_version=model_version,
        item_ids=buffers.item_ids[:rows].numpy(),
        occupied=buffers.occupied[:rows].numpy(),
        valid=buffers.valid[:rows].numpy(),
        item_embedding=as_numpy(buffers.item_embedding)[:rows],
        features=buffers.features[:rows].numpy(),
        eligibility=buffers.eligibility[:rows].numpy(),
        versions=buffers.versions[:rows].numpy(),
        tomb_ids=tomb_ids,
        tomb_versions=tomb_versions,
    )


def check_state(state: ModelState, layout: TensorLayout) -> None:
    """Raise ``ModelStateError`` naming the first thing in ``state`` that does not fit ``layout``."""
    if state.layout_hash != layout.layout_hash:
        raise ModelStateError(f"state has layout {state.layout_hash}, the model has {layout.layout_hash}")
    n, t = state.rows, state.tomb_ids.shape[0]
    expected: dict[str, tuple[tuple[int, ...], Any]] = {
        "item_ids": ((n,), np.int64),
        "occupied": ((n,), np.bool_),
        "valid": ((n,), np.bool_),
        "item_embedding": ((n, layout.embedding_dim), NUMPY_DTYPES[layout.embedding_dtype]),
        "features": ((n, layout.num_features), np.float32),
        "eligibility": ((n, layout.eligibility_words), np.int64),
        "versions": ((n, layout.num_regions), np.int64),
        "tomb_ids": ((t,), np.int64),
        "tomb_versions": ((t,), np.int64),
    }
    for name, (shape, dtype) in expected.items():
        array = getattr(state, name)
        if array.shape != shape or array.dtype != dtype:
            raise ModelStateError(
                f"{name} is {array.dtype}{list(array.shape)}, wants {np.dtype(dtype)}{list(shape)}"
            )
    _check_consistent(state)


def _check_consistent(state: ModelState) -> None:
    if (state.valid & ~state.occupied).any():
        raise ModelStateError("a row is valid but not occupied")
    ids = state.item_ids[state.occupied]
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise ModelStateError("an item id occupies two rows")
    if np.unique(state.tomb_ids).shape[0] != state.tomb_ids.shape[0]:
        raise ModelStateError("an item id has two tombstones")


def install_state(
    state: ModelState, layout: TensorLayout, *, copy: bool = True
) -> tuple[Buffers, IntMap, IntMap]:
    """Buffers (capacity = rows) holding ``state`` (copies, or the arrays themselves), the row map, the tombstones.

    Filling fresh pages is most of a copy, so the copies run on two threads (numpy releases the GIL).
    """
    names = ("item_embedding", "features", "eligibility", "versions", "valid", "occupied", "item_ids")
    with ThreadPoolExecutor(max_workers=2) as pool:
        arrays = dict(zip(names, pool.map(lambda n: _own(getattr(state, n), copy), names), strict=True))
        occupied = np.flatnonzero(state.occupied)
        rows = IntMap(state.item_ids[occupied], occupied.astype(np.int64))
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    if layout.embedding_dtype == "bfloat16":
        tensors["item_embedding"] = torch.from_numpy(arrays["item_embedding"].view(np.int16)).view(
            torch.bfloat16
        )
    bias = torch.from_numpy(feature_scores(layout, arrays["features"], arrays["valid"]))
    return Buffers(**tensors, score_bias=bias), rows, IntMap(state.tomb_ids, state.tomb_versions)


def _own(array: npt.NDArray[Any], copy: bool) -> npt.NDArray[Any]:
    if copy or not array.flags.writeable or not array.flags.c_contiguous:
        return np.array(array, copy=True, order="C")
    return array
