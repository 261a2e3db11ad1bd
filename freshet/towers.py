"""The two-tower retrieval model: hashed-feature towers for queries and items.

Both towers read plain event fields (strings, numbers, lists of strings). ``HashFeaturizer`` turns a
record into bucket ids with a stable hash (blake2b: identical in the Flink job, the replica and a
notebook, unlike Python's per-process salted ``hash()``); a ``Tower`` pools their embeddings and maps
them through a small MLP to an L2-normalized vector of the layout's dimension.

The item tower is what the Flink job runs on new items; the query tower is what a replica runs on user
features when a request carries no query embedding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

Record = Mapping[str, object]


@dataclass(frozen=True)
class TowerConfig:
    """Architecture of one tower; stored in the published manifest so a loader can rebuild it."""

    input_fields: tuple[str, ...]
    dim: int
    buckets: int = 1 << 16
    hidden: int = 128

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> TowerConfig:
        fields = d["input_fields"]
        assert isinstance(fields, list | tuple)
        return cls(tuple(str(f) for f in fields), int(d["dim"]), int(d["buckets"]), int(d["hidden"]))  # type: ignore[call-overload]


def _tokens(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tokens(v)]
    return str(value).lower().split()


class HashFeaturizer:
    """Record → bucket ids, ``field=token`` hashed with blake2b.

    >>> f = HashFeaturizer(("topic", "author_id"), buckets=1000)
    >>> ids = f.ids({"topic": "Cats and dogs", "author_id": 7})
    >>> len(ids), all(0 <= i < 1000 for i in ids), ids == f.ids({"author_id": 7, "topic": "cats AND dogs"})
    (4, True, True)
    """

    def __init__(self, fields: Sequence[str], buckets: int) -> None:
        self.fields = tuple(fields)
        self.buckets = buckets

    def ids(self, record: Record) -> list[int]:
        out = []
        for field in self.fields:
            for token in _tokens(record.get(field)):
                h = hashlib.blake2b(f"{field}={token}".encode(), digest_size=8).digest()
                out.append(int.from_bytes(h, "little") % self.buckets)
        return out or [0]  # bucket 0 stands for "no input": an empty bag would pool to NaN-free zeros anyway

    def batch(self, records: Sequence[Record]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, offsets)`` for ``nn.EmbeddingBag``."""
        flat: list[int] = []
        offsets: list[int] = []
        for record in records:
            offsets.append(len(flat))
            flat.extend(self.ids(record))
        return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


class Tower(nn.Module):
    """EmbeddingBag(mean) → MLP → L2-normalized ``dim``-vector."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.featurizer = HashFeaturizer(config.input_fields, config.buckets)
        self.bag = nn.EmbeddingBag(config.buckets, config.hidden, mode="mean")
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.dim)
        )

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.mlp(self.bag(ids, offsets)), dim=-1)

    @torch.no_grad()
    def embed(self, records: Sequence[Record]) -> torch.Tensor:
        """Embed records (eval mode, no autograd); each row's bits do not depend on the batch around it.

        A batched matmul rounds differently for different batch sizes (BLAS blocking), so the same item
        embedded alone or among 63 others can differ in the last float32 bit. Deltas must be a pure
        function of the input (DESIGN contract 2: a restored job, backfill and the live job agree bit for
        bit), so every record runs as a batch of one: ~13k items/s on one core, far above the rate of new
        items.
        """
        was_training = self.training
        self.eval()
        try:
            rows = [self(*self.featurizer.batch([record])) for record in records]
            return torch.cat(rows) if rows else torch.empty(0, self.config.dim)
        finally:
            self.train(was_training)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


class TwoTower(nn.Module):
    """A query tower and an item tower scoring by dot product."""

    def __init__(self, query: TowerConfig, item: TowerConfig) -> None:
        super().__init__()
        if query.dim != item.dim:
            raise ValueError(f"query dim {query.dim} != item dim {item.dim}")
        self.query_tower = Tower(query)
        self.item_tower = Tower(item)


def train_in_batch_softmax(
    model: TwoTower,
    pairs: Sequence[tuple[Record, Record]],
    *,
    epochs: int = 3,
    batch_size: int = 256,
    lr: float = 0.01,
    temperature: float = 0.05,
    seed: int = 0,
) -> list[float]:
    """Train on (query record, engaged item record) pairs with in-batch negatives; returns loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(pairs), generator=gen).tolist()
        total, batches = 0.0, 0
        for start in range(0, len(order), batch_size):
            chunk = [pairs[i] for i in order[start : start + batch_size]]
            q = model.query_tower(*model.query_tower.featurizer.batch([c[0] for c in chunk]))
            v = model.item_tower(*model.item_tower.featurizer.batch([c[1] for c in chunk]))
            logits = q @ v.T / temperature
            loss = nn.functional.cross_entropy(logits, torch.arange(len(chunk)))
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
    return losses
