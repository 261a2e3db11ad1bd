"""The systems compared on one stream: freshet's in-place apply, and rebuild-and-swap over the latest state.

Each takes decoded delta batches (``ingest``) and answers top-k queries with the served items' features
(``query``). freshet applies each batch to its ``IndexModel``. The rebuild-and-swap baseline keeps the
latest value of every (item, region) in plain arrays as deltas arrive (newest version wins, as in
freshet), and every ``period_s`` copies the retrievable rows out at one cut (under the state's lock),
builds a new index from the copy — torch tensors scored like freshet, or a faiss ``IndexFlatIP`` — and
swaps it in by replacing one reference: a query holds the index it started with, so it never sees a half
swap. The old index is freed when its last query ends; until then both copies are resident.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from freshet.deltas import DecodedBatch, DeltaKind
from freshet.intmap import IntMap
from freshet.layout import REGION_FIRST_FEATURE, TensorLayout
from freshet.model import IndexModel
from freshet.model_state import ModelState
from freshet.retrieval import feature_scores

Ints = npt.NDArray[np.int64]
Hits = tuple[Ints, npt.NDArray[np.float32]]  # item ids and their feature rows, best first


class System(Protocol):
    def ingest(self, batch: DecodedBatch) -> None: ...

    def query(self, query: torch.Tensor, k: int) -> Hits: ...

    def resident_bytes(self) -> int: ...


class Freshet:
    """An ``IndexModel`` restored from the catalog; every batch is applied in place as it arrives."""

    def __init__(self, layout: TensorLayout, catalog: ModelState) -> None:
        self.model = IndexModel.from_state(layout, catalog)

    def ingest(self, batch: DecodedBatch) -> None:
        self.model.apply(batch)

    def query(self, query: torch.Tensor, k: int) -> Hits:
        result = self.model.retrieve(query, k)
        return result.item_ids, result.features

    def resident_bytes(self) -> int:
        return sum(b.nbytes for b in self.model.buffers())


class LatestState:
    """The latest value of every item region, kept as deltas arrive: the baseline's source of truth."""

    def __init__(self, catalog: ModelState) -> None:
        self.lock = threading.Lock()
        self.item_ids, self.valid = catalog.item_ids, catalog.valid.copy()
        self.embedding, self.features = catalog.item_embedding, catalog.features
        self.eligibility, self.versions = catalog.eligibility, catalog.versions
        live = np.flatnonzero(catalog.occupied)
        self.rows = IntMap(catalog.item_ids[live], live.astype(np.int64))
        self.high_water = int(live.max(initial=-1)) + 1

    def update(self, batch: DecodedBatch) -> None:
        """Newest version per (item, region) wins, as in freshet; only an embedding makes a row retrievable."""
        if (batch.kind == DeltaKind.TOMBSTONE).any():
            raise NotImplementedError("the benchmark stream carries no deletes")
        with self.lock:
            rows = self._rows_of(batch.item_id)
            win = _newest_per_cell(rows, batch.region, batch.version, self.versions.shape[1])
            win = win[batch.version[win] > self.versions[rows[win], batch.region[win]]]
            self.versions[rows[win], batch.region[win]] = batch.version[win]
            for kind in (DeltaKind.EMBEDDING, DeltaKind.FEATURE, DeltaKind.ELIGIBILITY):
                chosen = win[batch.kind[win] == kind]
                self._write(kind, rows[chosen], chosen - batch.kind_slice(kind).start, chosen, batch)

    def _write(self, kind: DeltaKind, rows: Ints, values_at: Ints, chosen: Ints, batch: DecodedBatch) -> None:
        if kind is DeltaKind.EMBEDDING:
            self.embedding[rows] = batch.embeddings[values_at]
            self.valid[rows] = True
        elif kind is DeltaKind.FEATURE:
            self.features[rows, batch.region[chosen] - REGION_FIRST_FEATURE] = batch.feature_values[values_at]
        else:
            self.eligibility[rows] = batch.eligibility_words[values_at]

    def _rows_of(self, item_ids: Ints) -> Ints:
        rows = self.rows.get(item_ids)
        new_ids = np.unique(item_ids[rows < 0])
        if new_ids.shape[0]:
            new_rows = np.arange(self.high_water, self.high_water + new_ids.shape[0], dtype=np.int64)
            self._reserve(self.high_water + new_ids.shape[0])
            self.item_ids[new_rows] = new_ids
            self.rows.put(new_ids, new_rows)
            self.high_water += new_ids.shape[0]
            rows = self.rows.get(item_ids)
        return rows

    def _reserve(self, rows: int) -> None:
        if rows <= self.item_ids.shape[0]:
            return
        grow = max(rows, 2 * self.item_ids.shape[0])
        for name in ("item_ids", "valid", "embedding", "features", "eligibility", "versions"):
            old = getattr(self, name)
            new = np.full((grow, *old.shape[1:]), -1 if name == "versions" else 0, old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def cut(self) -> tuple[Ints, npt.NDArray[np.float32], npt.NDArray[np.float32], Ints]:
        """Copies of the retrievable rows at one point of the stream: ids, embeddings, features, eligibility."""
        with self.lock:
            rows = np.flatnonzero(self.valid[: self.high_water])
            return self.item_ids[rows], self.embedding[rows], self.features[rows], self.eligibility[rows]

    def nbytes(self) -> int:
        arrays = (self.item_ids, self.valid, self.embedding, self.features, self.eligibility, self.versions)
        return sum(a.nbytes for a in arrays)


def _newest_per_cell(rows: Ints, regions: Ints, versions: Ints, num_regions: int) -> Ints:
    """Positions of the newest delta of each (row, region) cell in the batch.

    >>> _newest_per_cell(np.array([0, 0, 1]), np.array([2, 2, 2]), np.array([5, 9, 1]), 4).tolist()
    [1, 2]
    """
    cell = rows * num_regions + regions
    order = np.lexsort((versions, cell))
    last = np.append(cell[order][1:] != cell[order][:-1], True)
    return order[last]


@dataclass(frozen=True, eq=False)
class TorchIndex:
    """A rebuilt index scored like freshet: ``embedding @ query + feature terms``, exact top-k."""

    item_ids: Ints
    embedding: torch.Tensor
    score_bias: torch.Tensor
    features: npt.NDArray[np.float32]
    eligibility: torch.Tensor

    @classmethod
    def build(cls, layout: TensorLayout, cut: tuple[Any, ...]) -> TorchIndex:
        ids, embedding, features, eligibility = cut
        bias = torch.from_numpy(feature_scores(layout, features))
        return cls(ids, torch.from_numpy(embedding), bias, features, torch.from_numpy(eligibility))

    def query(self, query: torch.Tensor, k: int) -> Hits:
        with torch.no_grad():
            scores = torch.addmv(self.score_bias, self.embedding, query)
            rows = torch.topk(scores, min(k, scores.shape[0])).indices.numpy()
        return self.item_ids[rows], self.features[rows]

    def nbytes(self) -> int:
        tensors = (self.embedding, self.score_bias, self.eligibility)
        return self.item_ids.nbytes + self.features.nbytes + sum(t.nbytes for t in tensors)


@dataclass(frozen=True, eq=False)
class FaissIndex:
    """A rebuilt faiss ``IndexFlatIP`` (exact inner product, no feature terms) and the rows' features."""

    item_ids: Ints
    index: Any
    features: npt.NDArray[np.float32]
    eligibility: Ints

    @classmethod
    def build(cls, layout: TensorLayout, cut: tuple[Any, ...]) -> FaissIndex:
        import faiss

        ids, embedding, features, eligibility = cut
        index = faiss.IndexFlatIP(layout.embedding_dim)
        index.add(embedding)  # faiss keeps its own copy; the cut's is freed on return
        return cls(ids, index, features, eligibility)

    def query(self, query: torch.Tensor, k: int) -> Hits:
        _, rows = self.index.search(query.numpy()[None, :], k)
        rows = rows[0][rows[0] >= 0]
        return self.item_ids[rows], self.features[rows]

    def nbytes(self) -> int:
        flat = int(self.index.ntotal) * int(self.index.d) * 4
        return self.item_ids.nbytes + self.features.nbytes + self.eligibility.nbytes + flat


INDEX_KINDS: dict[str, type[TorchIndex] | type[FaissIndex]] = {"torch": TorchIndex, "faiss": FaissIndex}


class RebuildAndSwap:
    """Latest state kept as deltas arrive; ``rebuild`` builds a fresh index from it and swaps it in."""

    def __init__(self, layout: TensorLayout, catalog: ModelState, index_kind: str) -> None:
        self.layout, self.kind = layout, INDEX_KINDS[index_kind]
        self.state = LatestState(catalog)
        self.served: TorchIndex | FaissIndex = self.kind.build(layout, self.state.cut())

    def ingest(self, batch: DecodedBatch) -> None:
        self.state.update(batch)

    def rebuild(self) -> None:
        fresh = self.kind.build(self.layout, self.state.cut())
        self.served = fresh  # one reference store: atomic for every query that starts after it

    def query(self, query: torch.Tensor, k: int) -> Hits:
        return self.served.query(query, k)

    def resident_bytes(self) -> int:
        return self.state.nbytes() + self.served.nbytes()
