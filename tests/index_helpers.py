"""Layouts and delta streams shared by the delta, apply, model and snapshot tests."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from freshet.deltas import Delta, DeltaKind
from freshet.layout import REGION_FIRST_FEATURE, BloomField, ExactBit, FeatureColumn, ScoreTerm, TensorLayout
from freshet.versions import eligibility_version, embedding_version, feature_version, tombstone_version


def small_layout(dim: int = 4, embedding_dtype: str = "float32") -> TensorLayout:
    """Three features, four exact bits and a Bloom field: 40 eligibility bits in one word, 24 of padding."""
    return TensorLayout(
        embedding_dim=dim,
        embedding_dtype=embedding_dtype,  # type: ignore[arg-type]
        feature_columns=(FeatureColumn("likes", 0), FeatureColumn("shares", 1), FeatureColumn("ctr", 2, 0.5)),
        exact_bits=tuple(ExactBit(name, i) for i, name in enumerate(["safe", "en", "pt", "kids"])),
        bloom_fields=(BloomField("region", offset=8, width_bits=32, num_hashes=2),),
        score_terms=(ScoreTerm(0, 0.25, "log1p"), ScoreTerm(2, 2.0, "none")),
    )


def wide_layout() -> TensorLayout:
    """Two eligibility words (exact bits in the first, a Bloom field in the second), no score terms."""
    return TensorLayout(
        embedding_dim=8,
        feature_columns=(FeatureColumn("likes", 0), FeatureColumn("views", 1)),
        exact_bits=tuple(ExactBit(f"b{i}", i) for i in range(64)),
        bloom_fields=(BloomField("lang", offset=64, width_bits=64, num_hashes=3),),
    )


def embedding(item_id: int, time_ms: int, values: Sequence[float], model_version: int = 0) -> Delta:
    vec = np.asarray(values, dtype=np.float32)
    return Delta(DeltaKind.EMBEDDING, item_id, 0, embedding_version(time_ms), time_ms, vec, model_version)


def feature(
    layout: TensorLayout, item_id: int, column: int, window_end_ms: int, value: float, firing: int = 0
) -> Delta:
    version = feature_version(window_end_ms, firing)
    region = REGION_FIRST_FEATURE + column
    return Delta(DeltaKind.FEATURE, item_id, region, version, window_end_ms, np.array([value], np.float32))


def eligibility(item_id: int, time_ms: int, words: Sequence[int]) -> Delta:
    vec = np.asarray(words, dtype=np.int64)
    return Delta(DeltaKind.ELIGIBILITY, item_id, 1, eligibility_version(time_ms), time_ms, vec)


def tombstone(item_id: int, time_ms: int) -> Delta:
    return Delta(
        DeltaKind.TOMBSTONE, item_id, 0, tombstone_version(time_ms), time_ms, np.zeros(0, np.float32)
    )


def random_stream(
    layout: TensorLayout, rng: random.Random, n: int, num_items: int = 40, model_version: int = 0
) -> list[Delta]:
    """A plausible delta stream: every kind, re-publishes, deletes, late firings; values are a function of the
    version, as the contract promises (the same version always carries the same value)."""
    deltas = []
    for _ in range(n):
        item, t = rng.randrange(num_items), rng.randrange(1, 200)
        deltas.append(_random_delta(layout, rng, item, t, model_version))
    return deltas


def _random_delta(layout: TensorLayout, rng: random.Random, item: int, t: int, model_version: int) -> Delta:
    kind = rng.choices(list(DeltaKind), weights=[4, 5, 2, 1])[0]
    seed = np.random.default_rng([item, t, int(kind)])
    if kind is DeltaKind.EMBEDDING:
        return embedding(item, t, seed.integers(-4, 5, layout.embedding_dim), model_version)
    if kind is DeltaKind.FEATURE:
        column, firing = rng.randrange(layout.num_features), rng.randrange(3)
        return feature(layout, item, column, t, float(seed.integers(0, 50)) + firing + column, firing)
    if kind is DeltaKind.ELIGIBILITY:
        bits = np.zeros(layout.eligibility_words * 64, dtype=np.uint8)
        bits[: layout.eligibility_bits] = seed.integers(0, 2, layout.eligibility_bits)
        return eligibility(item, t, np.packbits(bits, bitorder="little").view("<i8").tolist())
    return tombstone(item, t)
