"""Benchmark of the index-as-model core: apply throughput, query latency, snapshot write and load.

    .venv/bin/python -m bench.core            # 1M items x 64 dims, 16 features, 64 exact bits + Bloom
    .venv/bin/python -m bench.core --quick    # 50k items, a smoke run

Writes ``bench/results/core.json`` (flat keys; every name carries its unit) and ``core.png`` when matplotlib
is importable (``pip install -e '.[bench]'``). Query latency is reported next to the floor measured in the
same run — one full pass over the embedding matrix (``embedding @ query``) — and next to faiss-cpu's exact
``IndexFlatIP`` on the same data and queries when faiss is importable (it is not a dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshet.bits import bloom_positions, words_from_positions
from freshet.deltas import DecodedBatch, DeltaKind, decode_batch, encode_delta, record_bytes
from freshet.layout import BloomField, ExactBit, FeatureColumn, ScoreTerm, TensorLayout
from freshet.model import IndexModel
from freshet.model_state import ModelState
from freshet.rwlock import RWLock
from freshet.snapshot import load_snapshot, write_snapshot
from freshet.versions import embedding_version, event_version

RESULTS = Path(__file__).parent / "results"
REGIONS = [f"R{i}" for i in range(20)]
FILTER = {"required_bits": ["b3", "b17"], "bloom": {"region": ["R1", "R2", "R3"]}}
K = 100


def bench_layout() -> TensorLayout:
    return TensorLayout(
        embedding_dim=64,
        feature_columns=tuple(FeatureColumn(f"f{i}", i) for i in range(16)),
        exact_bits=tuple(ExactBit(f"b{i}", i) for i in range(64)),
        bloom_fields=(BloomField("region", offset=64, width_bits=64, num_hashes=3),),
        score_terms=(ScoreTerm(0, 0.1, "log1p"), ScoreTerm(1, 0.05, "none")),
    )


def initial_state(layout: TensorLayout, n: int, rng: np.random.Generator) -> ModelState:
    """``n`` live items: random embeddings and features, random exact bits, one or two regions each."""
    region_words = np.stack(
        [words_from_positions(bloom_positions(layout.bloom("region"), r), 2) for r in REGIONS]
    )
    first, second = rng.integers(0, len(REGIONS), n), rng.integers(0, len(REGIONS), n)
    eligibility = region_words[first] | np.where(rng.random(n)[:, None] < 0.5, region_words[second], 0)
    eligibility[:, 0] = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    ones = np.ones(n, dtype=bool)
    return ModelState(
        layout.layout_hash, 0, np.arange(n, dtype=np.int64), ones, ones.copy(),
        rng.standard_normal((n, layout.embedding_dim), dtype=np.float32),
        (rng.random((n, layout.num_features), dtype=np.float32) * 100),
        eligibility, np.full((n, layout.num_regions), embedding_version(1), np.int64),
        np.zeros(0, np.int64), np.zeros(0, np.int64),
    )  # fmt: skip


def update_batch(
    layout: TensorLayout, n_items: int, rows: int, time_ms: int, rng: np.random.Generator
) -> DecodedBatch:
    """A realistic mix on existing items: 20% embeddings, 70% feature columns, 10% eligibility words."""
    n_emb, n_feat = rows // 5, rows * 7 // 10
    n_elig = rows - n_emb - n_feat
    kinds = np.repeat(np.array([DeltaKind.EMBEDDING, DeltaKind.FEATURE, DeltaKind.ELIGIBILITY], np.uint8),
                      [n_emb, n_feat, n_elig])  # fmt: skip
    regions = [
        np.zeros(n_emb, np.int64),
        2 + rng.integers(0, layout.num_features, n_feat),
        np.ones(n_elig, np.int64),
    ]
    return DecodedBatch(
        layout.layout_hash, kinds, rng.integers(0, n_items, rows), np.concatenate(regions),
        np.full(rows, event_version(time_ms), np.int64), np.full(rows, time_ms, np.int64),
        np.zeros(rows, np.int64), np.arange(rows, dtype=np.int64),
        rng.standard_normal((n_emb, layout.embedding_dim), dtype=np.float32),
        rng.random(n_feat, dtype=np.float32), rng.integers(0, 2**62, (n_elig, layout.eligibility_words)),
    )  # fmt: skip


def ms(samples_s: list[float], q: float) -> float:
    return round(float(np.percentile(samples_s, q)) * 1e3, 3)


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


class TimedRWLock(RWLock):
    """Records how long each exclusive section holds queries off: the cost apply imposes on a query."""

    def __init__(self) -> None:
        super().__init__()
        self.holds_s: list[float] = []

    @contextmanager
    def write(self) -> Iterator[None]:
        with super().write():
            start = time.perf_counter()
            yield
            self.holds_s.append(time.perf_counter() - start)


# ---------------------------------------------------------------- measurements


def measure_apply(
    model: IndexModel, layout: TensorLayout, n_items: int, rng: np.random.Generator
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    lock = model._rw = TimedRWLock()  # instrumentation only: the model's own lock, timed
    clock = 1_000
    for rows, repeat in ((1_000, 60), (10_000, 20), (100_000, 6)):
        batches = [update_batch(layout, n_items, rows, clock + i, rng) for i in range(repeat)]
        clock += repeat
        lock.holds_s.clear()
        elapsed = sum(timed(lambda b=b: model.apply(b), 1)[0] for b in batches)  # type: ignore[misc]
        out[f"apply_rows_per_s_batch_{rows}"] = round(rows * repeat / elapsed)
        out[f"commit_hold_ms_p50_batch_{rows}"] = ms(lock.holds_s, 50)
        out[f"commit_hold_ms_p99_batch_{rows}"] = ms(lock.holds_s, 99)
    out["_clock"] = clock
    return out


def measure_queries(model: IndexModel, queries: torch.Tensor, label: str) -> dict[str, Any]:
    """Per query, in rotation so all three see the same conditions: the floor (one pass over the embedding
    matrix), the filtered top-k and the unfiltered top-k. A few untimed queries warm up first."""
    embedding = model.item_embedding[: len(model)]
    for q in queries[:5]:
        model.retrieve(q, K, **FILTER)
        model.retrieve(q, K)
    floor, filtered, unfiltered = [], [], []
    for q in queries:
        floor += timed(lambda q=q: embedding @ q, 1)  # type: ignore[misc]
        filtered += timed(lambda q=q: model.retrieve(q, K, **FILTER), 1)  # type: ignore[misc]
        unfiltered += timed(lambda q=q: model.retrieve(q, K), 1)  # type: ignore[misc]
    return {
        f"floor_ms_{label}": ms(floor, 50), f"floor_p99_ms_{label}": ms(floor, 99),
        f"query_p50_ms_{label}": ms(filtered, 50), f"query_p99_ms_{label}": ms(filtered, 99),
        f"query_p50_ms_{label}_unfiltered": ms(unfiltered, 50), f"query_p99_ms_{label}_unfiltered": ms(unfiltered, 99),
    }  # fmt: skip


def measure_under_apply(
    model: IndexModel, layout: TensorLayout, n_items: int, queries: torch.Tensor, clock: int, rate: int
) -> dict[str, Any]:
    """Queries while a thread applies ``rate`` rows/s in 10k-row batches, paced; the batches cycle with their
    versions raised each round, so every one applies."""
    stop, applied, rng = threading.Event(), [0], np.random.default_rng(7)
    batches = [update_batch(layout, n_items, 10_000, clock + i, rng) for i in range(20)]

    def writer() -> None:
        start, i = time.perf_counter(), 0
        while not stop.is_set():
            batch = batches[i % len(batches)]
            model.apply(
                replace(batch, version=batch.version + event_version(i // len(batches) * len(batches)))
            )
            applied[0], i = applied[0] + 10_000, i + 1
            time.sleep(max(0.0, start + applied[0] / rate - time.perf_counter()))

    thread = threading.Thread(target=writer)
    start = time.perf_counter()
    thread.start()
    out = measure_queries(model, queries, "under_apply")
    stop.set()
    thread.join()
    out["apply_rows_per_s_during_queries"] = round(applied[0] / (time.perf_counter() - start))
    return out


def measure_faiss(embeddings: np.ndarray, queries: torch.Tensor) -> dict[str, Any]:
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return {
            "faiss_note": "faiss-cpu not importable: faiss keys skipped (pip install faiss-cpu to compare)"
        }
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings))
    it = iter(queries.numpy())
    samples = timed(lambda: index.search(next(it)[None, :], K), len(queries))
    return {"faiss_query_p50_ms": ms(samples, 50), "faiss_query_p99_ms": ms(samples, 99),
            "faiss_note": f"faiss-cpu {faiss.__version__} IndexFlatIP, exact top-{K}, no eligibility filter"}  # fmt: skip


def measure_snapshot(model: IndexModel, layout: TensorLayout) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="freshet-bench-"))
    try:
        start = time.perf_counter()
        path = write_snapshot(model, root, {0: 123})
        out: dict[str, Any] = {"snapshot_write_s": round(time.perf_counter() - start, 3)}
        out["snapshot_bytes"] = sum(f.stat().st_size for f in path.iterdir())
        for label, verify in (("", False), ("_with_digest", True)):
            start = time.perf_counter()
            loaded, _ = load_snapshot(path, layout, verify_digest=verify)
            out[f"snapshot_load{label}_s"] = round(time.perf_counter() - start, 3)
            del loaded
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_codec(layout: TensorLayout, rng: np.random.Generator) -> dict[str, Any]:
    import pyarrow as pa

    delta = update_batch(layout, 1, 5, 2, rng).delta(0)  # an embedding delta
    value = encode_delta(delta, layout)
    ints = {
        name: pa.array([getattr(delta, name)], pa.int64()) for name in ("item_id", "version", "event_time_ms")
    }
    table = pa.table({
        "kind": pa.array([int(delta.kind)], pa.uint8()), "region": pa.array([delta.region], pa.uint16()), **ints,
        "model_version": pa.array([0], pa.int64()), "layout_hash": pa.array([layout.layout_hash_bytes], pa.binary(8)),
        "values": pa.array([delta.values.tolist()], pa.list_(pa.float32(), layout.embedding_dim)),
    })  # fmt: skip
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    values = [value] * 100_000
    features = [encode_delta(update_batch(layout, 1, 10, 3, rng).delta(3), layout)] * 100_000
    return {
        "codec_record_bytes_fixed_embedding": len(value),
        "codec_record_bytes_fixed_feature": record_bytes(DeltaKind.FEATURE, layout),
        "codec_record_bytes_arrow_ipc_embedding": sink.getvalue().size,
        "decode_records_per_s_embedding": round(
            len(values) / min(timed(lambda: decode_batch(values, layout), 3))
        ),
        "decode_records_per_s_feature": round(
            len(features) / min(timed(lambda: decode_batch(features, layout), 3))
        ),
    }


# ---------------------------------------------------------------- report


def plot(results: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib  # type: ignore[import-not-found]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    except ImportError:
        return "matplotlib not importable: no plot (pip install -e '.[bench]')"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [1_000, 10_000, 100_000]
    left.bar([f"{s:,}" for s in sizes], [results[f"apply_rows_per_s_batch_{s}"] / 1e6 for s in sizes])
    left.axhline(2.0, color="red", linestyle="--", label="goal 2M rows/s")
    left.set(title="apply throughput", xlabel="rows per batch", ylabel="M rows/s")
    left.legend()
    labels = ["floor (one pass)", "filtered, idle", "filtered, under apply", "unfiltered, idle", "faiss flat"]
    for offset, q in ((-0.2, "p50"), (0.2, "p99")):
        keys = ["floor_ms_idle" if q == "p50" else "floor_p99_ms_idle", f"query_{q}_ms_idle", f"query_{q}_ms_under_apply",
                f"query_{q}_ms_idle_unfiltered", f"faiss_query_{q}_ms"]  # fmt: skip
        right.bar(np.arange(len(labels)) + offset, [results.get(k, 0) for k in keys], width=0.4, label=q)
    right.axhline(1.5 * results["floor_ms"], color="red", linestyle="--", label="1.5 x floor")
    right.set_xticks(np.arange(len(labels)), labels, rotation=15)
    right.set(title=f"top-{K} query latency, {results['items']:,} items", ylabel="ms")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot: {path.name}"


def run(items: int, n_queries: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    layout = bench_layout()
    results: dict[str, Any] = {
        "items": items, "embedding_dim": layout.embedding_dim, "feature_columns": layout.num_features,
        "exact_bits": len(layout.exact_bits), "bloom_bits": 64, "eligibility_words": layout.eligibility_words,
        "top_k": K, "queries": n_queries, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "torch_version": torch.__version__,
        "numpy_version": np.__version__, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }  # fmt: skip
    state = initial_state(layout, items, rng)
    model = IndexModel.from_state(layout, state)
    results["model_bytes"] = sum(b.nbytes for b in model.buffers())
    queries = torch.from_numpy(rng.standard_normal((n_queries, layout.embedding_dim), dtype=np.float32))
    results |= measure_queries(model, queries, "idle")
    applied = measure_apply(model, layout, items, rng)
    clock = applied.pop("_clock")
    results |= applied
    results |= measure_under_apply(model, layout, items, queries, clock, rate=100_000)
    results |= measure_faiss(state.item_embedding, queries)
    results |= measure_snapshot(model, layout)
    results |= measure_codec(layout, rng)
    results["floor_ms"] = results["floor_ms_idle"]
    for label in ("idle", "under_apply"):  # against the floor's median, and against the floor's own p99
        p99 = results[f"query_p99_ms_{label}"]
        results[f"query_p99_over_floor_{label}"] = round(p99 / results["floor_ms"], 2)
        results[f"query_p99_over_floor_p99_{label}"] = round(p99 / results[f"floor_p99_ms_{label}"], 2)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="50k items and fewer queries (smoke run)")
    parser.add_argument("--items", type=int, help="number of items (default 1,000,000; 50,000 with --quick)")
    parser.add_argument("--out", type=Path, default=RESULTS / "core.json")
    args = parser.parse_args(argv)
    items = args.items or (50_000 if args.quick else 1_000_000)
    results = run(items, n_queries=40 if args.quick else 200)
    results["plot_note"] = plot(results, args.out.with_suffix(".png"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
