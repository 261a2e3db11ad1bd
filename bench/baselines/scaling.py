"""Scaling: query latency, apply throughput and memory per item of one replica at growing catalog sizes.

Each size runs in its own process on the example layout (64-dim float32, 8 feature columns, 4 eligibility
words). Memory per item is the replica's resident set after the model is built minus before (``VmRSS``),
beside the bytes of its buffers. The rebuild-and-swap baseline's cost at the same size (one rebuild: cut
the latest state, build torch tensors or a faiss ``IndexFlatIP``) is measured too: it is what that design
pays every period.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np
import torch

from bench.baselines.measure import Percentiles, available_bytes, one_intra_op_thread, rss_bytes
from bench.baselines.stream import START_MS, catalog_state, example_feature_set, unit_vectors
from bench.baselines.systems import FaissIndex, LatestState, TorchIndex
from freshet.deltas import DecodedBatch, DeltaKind
from freshet.layout import REGION_ELIGIBILITY, REGION_EMBEDDING, REGION_FIRST_FEATURE, TensorLayout
from freshet.model import IndexModel
from freshet.versions import event_version

K = 100
FILTER: dict[str, Any] = {"required_bits": ["policy_ok"], "bloom": {"region": ["PT", "ES"]}}
BATCH_ROWS = 10_000
#: bytes a size needs at its peak, per item: the catalog arrays, the model's copy, and the apply batches
PEAK_BYTES_PER_ITEM = 1_100


def fits(items: int) -> bool:
    """Whether a size's peak (catalog + model, then catalog + rebuild copy) fits in the memory available now."""
    return items * PEAK_BYTES_PER_ITEM < 0.8 * available_bytes()


def mixed_batch(
    layout: TensorLayout, items: int, rows: int, time_ms: int, rng: np.random.Generator
) -> DecodedBatch:
    """``rows`` deltas on existing items, newer than the catalog: 20% embeddings, 70% features, 10% eligibility."""
    n_emb, n_feat = rows // 5, rows * 7 // 10
    n_elig = rows - n_emb - n_feat
    counts = [n_emb, n_feat, n_elig]
    kinds = np.repeat(
        np.array([DeltaKind.EMBEDDING, DeltaKind.FEATURE, DeltaKind.ELIGIBILITY], np.uint8), counts
    )
    region = np.concatenate([
        np.full(n_emb, REGION_EMBEDDING),
        REGION_FIRST_FEATURE + rng.integers(0, layout.num_features, n_feat),
        np.full(n_elig, REGION_ELIGIBILITY),
    ]).astype(np.int64)  # fmt: skip
    column = np.zeros(rows, np.int64)
    return DecodedBatch(
        layout.layout_hash, kinds, rng.integers(0, items - 64, rows), region,
        np.full(rows, event_version(time_ms), np.int64), np.full(rows, time_ms, np.int64), column, np.arange(rows),
        unit_vectors(rng, n_emb, layout.embedding_dim), rng.random(n_feat, dtype=np.float32) * 50,
        np.zeros((n_elig, layout.eligibility_words), np.int64),
    )  # fmt: skip


def run_size(items: int, queries: int, seed: int = 0) -> dict[str, Any]:
    """One catalog size: the replica's numbers, then one rebuild of the baseline at the same size."""
    one_intra_op_thread()
    feature_set = example_feature_set()
    layout = feature_set.layout()
    gc.collect()
    before = rss_bytes()
    model = IndexModel.from_state(layout, catalog_state(feature_set, items, 0, seed))
    gc.collect()
    out: dict[str, Any] = {
        "items": items,
        "torch_threads": torch.get_num_threads(),
        "model_bytes_per_item": round(sum(b.nbytes for b in model.buffers()) / items, 1),
        "rss_bytes_per_item": round((rss_bytes() - before) / items, 1),
    }
    out |= _queries(model, layout, queries, seed)
    out |= _apply(model, layout, items, seed)
    del model
    gc.collect()
    out |= _rebuild(feature_set, items, seed)
    return out


def _queries(model: IndexModel, layout: TensorLayout, n: int, seed: int) -> dict[str, Any]:
    qs = torch.from_numpy(unit_vectors(np.random.default_rng(seed + 3), n, layout.embedding_dim))
    out: dict[str, Any] = {}
    for label, filters in (("unfiltered", {}), ("filtered", FILTER)):
        model.retrieve(qs[0], K, **filters)  # warm
        samples = []
        for q in qs:
            began = time.perf_counter()
            model.retrieve(q, K, **filters)
            samples.append((time.perf_counter() - began) * 1e3)
        out |= Percentiles.of(samples, f"query_{label}", "ms", (50, 99))
    return out


def _apply(model: IndexModel, layout: TensorLayout, items: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 4)
    batches = [mixed_batch(layout, items, BATCH_ROWS, START_MS + i, rng) for i in range(20)]
    model.apply(batches[0])  # warm
    began = time.perf_counter()
    for batch in batches[1:]:
        model.apply(batch)
    return {
        "apply_rows_per_s_batch_10000": round(BATCH_ROWS * (len(batches) - 1) / (time.perf_counter() - began))
    }


def _rebuild(feature_set: Any, items: int, seed: int) -> dict[str, Any]:
    layout = feature_set.layout()
    state = LatestState(catalog_state(feature_set, items, 0, seed))
    out: dict[str, Any] = {}
    for name, kind in (("torch", TorchIndex), ("faiss", FaissIndex)):
        began = time.perf_counter()
        index = kind.build(layout, state.cut())
        out[f"rebuild_{name}_s"] = round(time.perf_counter() - began, 3)
        out[f"rebuild_{name}_index_bytes_per_item"] = round(index.nbytes() / items, 1)
        del index
        gc.collect()
    return out
