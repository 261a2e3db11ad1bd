"""Train the two-tower model the feature definitions name, and publish it.

The item tower reads the embedding's declared ``input_fields``; the query tower reads a user's id and
interests (what ``freshet.feedgen`` users carry). ``train_and_publish`` is what ``freshet model
publish`` and the demo run: a few seconds of in-batch-softmax training on synthetic interactions.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from freshet.feedgen import FeedConfig, FeedGenerator
from freshet.publish import publish_model
from freshet.spec import FeatureSet
from freshet.towers import TowerConfig, TwoTower, train_in_batch_softmax

QUERY_FIELDS = ("user_id", "interests")


def build_model(
    feature_set: FeatureSet, *, seed: int = 0, buckets: int = 1 << 14, hidden: int = 64
) -> TwoTower:
    """An untrained two-tower model shaped by ``feature_set.embedding``."""
    emb = feature_set.embedding
    if emb is None:
        raise ValueError("the feature definitions declare no embedding: nothing to train")
    torch.manual_seed(seed)
    return TwoTower(
        TowerConfig(QUERY_FIELDS, emb.dim, buckets=buckets, hidden=hidden),
        TowerConfig(tuple(emb.input_fields), emb.dim, buckets=buckets, hidden=hidden),
    )


def train_and_publish(
    feature_set: FeatureSet,
    models_root: Path,
    *,
    pairs: int = 20_000,
    epochs: int = 3,
    seed: int = 0,
    version: int | None = None,
) -> tuple[Path, list[float]]:
    """Train on ``pairs`` synthetic interactions and publish; returns the version dir and loss per epoch."""
    model = build_model(feature_set, seed=seed)
    data = FeedGenerator(FeedConfig(seed=seed + 7), start_ms=0).training_pairs(pairs)
    losses = train_in_batch_softmax(model, data, epochs=epochs, seed=seed)
    assert feature_set.embedding is not None
    path = publish_model(
        models_root,
        feature_set.embedding.model,
        model,
        layout_hash=feature_set.layout().layout_hash,
        version=version,
    )
    return path, losses


def main_publish(defs: Path, models_root: Path, *, pairs: int, epochs: int, seed: int) -> int:
    """``freshet model publish``: train, publish, print where."""
    from freshet.spec import load_feature_set

    started = time.monotonic()
    path, losses = train_and_publish(
        load_feature_set(defs), models_root, pairs=pairs, epochs=epochs, seed=seed
    )
    took = time.monotonic() - started
    print(f"published {path} (loss {losses[0]:.3f} -> {losses[-1]:.3f}, {pairs} pairs, {took:.1f} s)")
    return 0
