"""The tensor layout both sides derive from ``feature_defs``: tensors, columns, bits, regions, hash.

A ``TensorLayout`` is plain, frozen data. ``freshet.spec`` builds it from validated feature
definitions (``FeatureSet.layout()``); the Flink jobs use it to encode deltas, the replica uses it to
build and check its tensors. ``layout_hash`` changes whenever anything that changes the meaning of a
tensor byte changes, and only then.

Regions are the units of last-writer-wins versioning on a row (DESIGN contract 2):

* region 0: the item embedding (``item_embedding[row, :]``),
* region 1: the eligibility words (``eligibility[row, :]``),
* region 2 + i: feature column i (``features[row, i]``).

Each feature column has its own region because different windowed features of one item fire at
different window ends; one shared version would let a newer column hide an older one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

EmbeddingDType = Literal["float32", "float16", "bfloat16"]

REGION_EMBEDDING = 0
REGION_ELIGIBILITY = 1
REGION_FIRST_FEATURE = 2

#: Eligibility bits are packed into int64 words (torch has no unsigned 64-bit bitwise ops).
BITS_PER_WORD = 64


@dataclass(frozen=True)
class FeatureColumn:
    """One column of the ``features`` tensor (float32), filled by one declared windowed aggregate."""

    name: str
    index: int
    default: float = 0.0


@dataclass(frozen=True)
class ScoreTerm:
    """A feature term of the retrieval score: ``weight * transform(features[row, column])``.

    Scoring does not shape tensor bytes, so score terms are not part of ``layout_hash``:
    re-weighting a feature must not make every delta in flight incompatible.
    """

    column: int
    weight: float
    transform: Literal["none", "log1p"] = "log1p"


@dataclass(frozen=True)
class ExactBit:
    """A named eligibility bit at an absolute bit position of the ``eligibility`` words."""

    name: str
    position: int


@dataclass(frozen=True)
class BloomField:
    """Bloom signature bits of one high-cardinality attribute (e.g. region, language).

    Occupies bit positions ``[offset, offset + width_bits)`` of the eligibility words; each value
    sets ``num_hashes`` bits chosen by ``freshet.bits`` hashing.
    """

    name: str
    offset: int
    width_bits: int
    num_hashes: int


@dataclass(frozen=True)
class TensorLayout:
    """Shapes, dtypes and bit positions of the index-as-model tensors."""

    embedding_dim: int
    embedding_dtype: EmbeddingDType = "float32"
    feature_columns: tuple[FeatureColumn, ...] = ()
    exact_bits: tuple[ExactBit, ...] = ()
    bloom_fields: tuple[BloomField, ...] = ()
    #: model that computes the item embedding (its item tower); versions are per publish
    embedding_model: str = "default"
    score_terms: tuple[ScoreTerm, ...] = ()
    _hash: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {self.embedding_dim}")
        for i, col in enumerate(self.feature_columns):
            if col.index != i:
                raise ValueError(f"feature column {col.name!r} has index {col.index}, expected {i}")
        for term in self.score_terms:
            if not 0 <= term.column < len(self.feature_columns):
                n = len(self.feature_columns)
                raise ValueError(f"score term names column {term.column}, layout has {n}")
        object.__setattr__(self, "_hash", _hash_of(self))

    @property
    def num_features(self) -> int:
        return len(self.feature_columns)

    @property
    def eligibility_bits(self) -> int:
        """Bits used: exact bits first, then each Bloom field's block."""
        ends = [b.position + 1 for b in self.exact_bits]
        ends += [f.offset + f.width_bits for f in self.bloom_fields]
        return max(ends, default=0)

    @property
    def eligibility_words(self) -> int:
        """Number of int64 words per row (at least 1, so the tensor is never empty)."""
        return max(1, -(-self.eligibility_bits // BITS_PER_WORD))

    @property
    def num_regions(self) -> int:
        return REGION_FIRST_FEATURE + self.num_features

    @property
    def layout_hash(self) -> str:
        """16 hex digits of sha256 over the canonical JSON of everything that shapes a tensor byte."""
        return self._hash

    @property
    def layout_hash_bytes(self) -> bytes:
        return bytes.fromhex(self._hash)

    def feature_region(self, name: str) -> int:
        """Region id of the feature column called ``name``."""
        for col in self.feature_columns:
            if col.name == name:
                return REGION_FIRST_FEATURE + col.index
        raise KeyError(f"no feature column named {name!r}")

    def bit(self, name: str) -> ExactBit:
        for b in self.exact_bits:
            if b.name == name:
                return b
        raise KeyError(f"no exact bit named {name!r}")

    def bloom(self, name: str) -> BloomField:
        for f in self.bloom_fields:
            if f.name == name:
                return f
        raise KeyError(f"no Bloom field named {name!r}")

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("_hash", None)
        return d

    def hashed_dict(self) -> dict[str, object]:
        """What ``layout_hash`` covers: everything but ``score_terms``."""
        d = self.to_dict()
        d.pop("score_terms", None)
        return d


def _hash_of(layout: TensorLayout) -> str:
    canonical = json.dumps(layout.hashed_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
