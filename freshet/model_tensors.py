"""The tensors of an ``IndexModel`` and the scatters that change them (callers hold the model's locks).

``Buffers`` groups the tensors so that growth and restore can build a whole new set beside the live one and
swap it in at once. ``Writes`` is a planned batch converted to tensors before the exclusive section, so
that section only scatters.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from freshet.apply_plan import ApplyPlan, IntMap
from freshet.deltas import DecodedBatch, DeltaKind
from freshet.errors import FreshetError
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
            features=defaults.repeat(capacity, 1),
            eligibility=torch.zeros(capacity, layout.eligibility_words, dtype=torch.int64),
            versions=torch.full((capacity, layout.num_regions), -1, dtype=torch.int64),
            valid=torch.zeros(capacity, dtype=torch.bool),
            occupied=torch.zeros(capacity, dtype=torch.bool),
            item_ids=torch.zeros(capacity, dtype=torch.int64),
            score_bias=feature_scores(layout, defaults[None, :]).expand(capacity).clone(),
        )

    def copy_rows_from(self, other: Buffers, rows: int) -> None:
        for name in self.names():
            getattr(self, name)[:rows] = getattr(other, name)[:rows]

    def occupy(self, rows_np: Ints, ids: Ints, floor: Ints, layout: TensorLayout) -> None:
        """Give ``rows`` to new items: default contents, every cell at version ``floor``, not yet valid."""
        rows = torch.from_numpy(rows_np)
        self.item_embedding[rows] = 0
        self.features[rows] = _defaults(layout)
        self.eligibility[rows] = 0
        self.versions[rows] = torch.from_numpy(floor)[:, None]
        self.valid[rows] = False
        self.occupied[rows] = True
        self.item_ids[rows] = torch.from_numpy(ids)

    def reset(self, rows_np: Ints, regions_np: Ints, versions: Ints, layout: TensorLayout) -> None:
        """Set cells back to their defaults at the given (tombstone) versions."""
        rows, regions = torch.from_numpy(rows_np), torch.from_numpy(regions_np)
        self.versions[rows, regions] = torch.from_numpy(versions)
        embedding_rows = rows[regions == REGION_EMBEDDING]
        self.item_embedding[embedding_rows] = 0
        self.valid[embedding_rows] = False
        self.eligibility[rows[regions == REGION_ELIGIBILITY]] = 0
        is_feature = regions >= REGION_FIRST_FEATURE
        columns = regions[is_feature] - REGION_FIRST_FEATURE
        self.features[rows[is_feature], columns] = _defaults(layout)[columns]

    def free(self, rows_np: Ints) -> None:
        """Return rows whose every cell was reset to the free list."""
        rows = torch.from_numpy(rows_np)
        self.occupied[rows] = False
        self.versions[rows] = -1
        self.item_ids[rows] = 0

    def refresh_scores(self, rows_np: Ints, layout: TensorLayout) -> None:
        rows = torch.from_numpy(rows_np)
        self.score_bias[rows] = feature_scores(layout, self.features[rows])


def _defaults(layout: TensorLayout) -> torch.Tensor:
    return torch.tensor([c.default for c in layout.feature_columns], dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class Writes:
    """The winning updates of a plan as tensors: rows and values per kind, and their (row, region) versions."""

    embedding_rows: torch.Tensor
    embeddings: torch.Tensor
    feature_rows: Ints
    feature_columns: torch.Tensor
    feature_values: torch.Tensor
    eligibility_rows: torch.Tensor
    eligibility_words: torch.Tensor
    cell_rows: torch.Tensor
    cell_regions: torch.Tensor
    cell_versions: torch.Tensor

    @classmethod
    def of(cls, plan: ApplyPlan, batch: DecodedBatch, dtype: torch.dtype) -> Writes:
        (e_rows, e_pos), (f_rows, f_pos), (l_rows, l_pos) = (plan.winners[k] for k in _UPDATE_KINDS)
        positions = np.concatenate([e_pos, f_pos, l_pos])
        return cls(
            torch.from_numpy(e_rows),
            torch.from_numpy(batch.embeddings[e_pos - batch.kind_slice(DeltaKind.EMBEDDING).start]).to(dtype),
            f_rows,
            torch.from_numpy(batch.region[f_pos] - REGION_FIRST_FEATURE),
            torch.from_numpy(batch.feature_values[f_pos - batch.kind_slice(DeltaKind.FEATURE).start]),
            torch.from_numpy(l_rows),
            torch.from_numpy(batch.eligibility_words[l_pos - batch.kind_slice(DeltaKind.ELIGIBILITY).start]),
            torch.from_numpy(np.concatenate([e_rows, f_rows, l_rows])),
            torch.from_numpy(batch.region[positions]),
            torch.from_numpy(batch.version[positions]),
        )

    def scatter(self, buffers: Buffers) -> None:
        buffers.item_embedding[self.embedding_rows] = self.embeddings
        buffers.valid[self.embedding_rows] = True
        buffers.features[torch.from_numpy(self.feature_rows), self.feature_columns] = self.feature_values
        buffers.eligibility[self.eligibility_rows] = self.eligibility_words
        buffers.versions[self.cell_rows, self.cell_regions] = self.cell_versions


_UPDATE_KINDS = (DeltaKind.EMBEDDING, DeltaKind.FEATURE, DeltaKind.ELIGIBILITY)


# ---------------------------------------------------------------- state in and out


def view_state(
    buffers: Buffers, rows: int, tombs: IntMap, layout: TensorLayout, model_version: int
) -> ModelState:
    """Numpy views of rows ``[0, rows)`` (no copy: valid only while the caller holds the writer mutex)."""
    embedding = buffers.item_embedding[:rows]
    if layout.embedding_dtype == "bfloat16":
        embedding = embedding.view(torch.int16)
    tomb_ids, tomb_versions = tombs.arrays()
    return ModelState(
        layout_hash=layout.layout_hash,
        model_version=model_version,
        item_ids=buffers.item_ids[:rows].numpy(),
        occupied=buffers.occupied[:rows].numpy(),
        valid=buffers.valid[:rows].numpy(),
        item_embedding=embedding.numpy().view(NUMPY_DTYPES[layout.embedding_dtype]),
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


def install_state(state: ModelState, layout: TensorLayout) -> tuple[Buffers, IntMap, IntMap]:
    """New buffers (capacity = rows) holding copies of ``state``, its row map and its tombstone map."""
    raw = np.array(state.item_embedding, copy=True)
    bf16 = layout.embedding_dtype == "bfloat16"
    embedding = torch.from_numpy(raw.view(np.int16) if bf16 else raw)
    embedding = embedding.view(torch.bfloat16) if bf16 else embedding
    features = torch.from_numpy(np.array(state.features, copy=True))
    buffers = Buffers(
        item_embedding=embedding,
        features=features,
        eligibility=torch.from_numpy(np.array(state.eligibility, copy=True)),
        versions=torch.from_numpy(np.array(state.versions, copy=True)),
        valid=torch.from_numpy(np.array(state.valid, copy=True)),
        occupied=torch.from_numpy(np.array(state.occupied, copy=True)),
        item_ids=torch.from_numpy(np.array(state.item_ids, copy=True)),
        score_bias=feature_scores(layout, features),
    )
    occupied = np.flatnonzero(state.occupied)
    rows = IntMap(state.item_ids[occupied], occupied.astype(np.int64))
    return buffers, rows, IntMap(state.tomb_ids, state.tomb_versions)
