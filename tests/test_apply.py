"""In-place apply: last writer wins by version, deletes, convergence against an oracle, atomic visibility."""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from index_helpers import embedding, feature, random_stream, small_layout, tombstone, wide_layout

from freshet.deltas import DecodedBatch, Delta, DeltaKind, batch_of
from freshet.layout import ExactBit, FeatureColumn, TensorLayout
from freshet.model import IncompatibleBatchError, IndexModel
from freshet.versions import eligibility_version, embedding_version, feature_version

LAYOUT = small_layout()


def applied(model: IndexModel, *batches: list[Delta]) -> list[tuple[int, int]]:
    out = []
    for deltas in batches:
        stats = model.apply(batch_of(deltas, LAYOUT))
        assert not stats.rejected
        out.append((stats.applied, stats.skipped_stale))
    return out


def emb_of(model: IndexModel, item_id: int) -> list[float] | None:
    item = model.item(item_id)
    return item["embedding"].tolist() if item and item["valid"] else None


# ---------------------------------------------------------------- the rule, case by case

LWW_CASES = [
    ("newer replaces", [[embedding(1, 5, [1] * 4)], [embedding(1, 6, [2] * 4)]], [2] * 4, [(1, 0), (1, 0)]),
    ("older is skipped", [[embedding(1, 6, [2] * 4)], [embedding(1, 5, [1] * 4)]], [2] * 4, [(1, 0), (0, 1)]),
    ("equal is skipped", [[embedding(1, 5, [1] * 4)], [embedding(1, 5, [3] * 4)]], [1] * 4, [(1, 0), (0, 1)]),
    ("in-batch newest wins", [[embedding(1, 7, [7] * 4), embedding(1, 5, [5] * 4), embedding(1, 6, [6] * 4)]],
     [7] * 4, [(1, 2)]),
    ("in-batch tie: first wins", [[embedding(1, 5, [1] * 4), embedding(1, 5, [3] * 4)]], [1] * 4, [(1, 1)]),
    ("delete hides", [[embedding(1, 5, [1] * 4)], [tombstone(1, 6)]], None, [(1, 0), (1, 0)]),
    ("replay after delete stays deleted", [[embedding(1, 5, [1] * 4), tombstone(1, 6)], [embedding(1, 5, [1] * 4)]],
     None, [(1, 1), (0, 1)]),
    ("delete wins its millisecond", [[tombstone(1, 5)], [embedding(1, 5, [1] * 4)]], None, [(1, 0), (0, 1)]),
    ("re-publish after delete", [[embedding(1, 5, [1] * 4)], [tombstone(1, 6)], [embedding(1, 7, [2] * 4)]],
     [2] * 4, [(1, 0), (1, 0), (1, 0)]),
    ("re-publish arriving first survives the delete", [[embedding(1, 7, [2] * 4)], [tombstone(1, 6)]], [2] * 4,
     [(1, 0), (1, 0)]),
    ("older delete is skipped", [[tombstone(1, 6)], [tombstone(1, 4)]], None, [(1, 0), (0, 1)]),
    ("features alone are not retrievable", [[feature(LAYOUT, 1, 0, 5, 1.0)]], None, [(1, 0)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "batches", "expected", "stats"), LWW_CASES, ids=[c[0] for c in LWW_CASES])
def test_last_writer_wins_by_version(name: str, batches: list[list[Delta]], expected, stats) -> None:  # type: ignore[no-untyped-def]
    model = IndexModel(LAYOUT)
    assert applied(model, *batches) == stats
    assert emb_of(model, 1) == expected
    assert len(model) == (expected is not None)


def test_features_are_versioned_per_column_and_survive_a_newer_delete_only_if_newer() -> None:
    model = IndexModel(LAYOUT)
    applied(model, [embedding(1, 1, [1] * 4), feature(LAYOUT, 1, 0, 10, 1.0), feature(LAYOUT, 1, 1, 30, 2.0)])
    applied(
        model, [feature(LAYOUT, 1, 0, 10, 9.0, firing=1), feature(LAYOUT, 1, 1, 20, 9.0)], [tombstone(1, 25)]
    )
    item = model.item(1)
    assert item is not None and not item["valid"]
    assert item["features"] == {
        "likes": 0.0,
        "shares": 2.0,
        "ctr": 0.5,
    }  # likes reset to default, shares newer
    assert item["versions"]["likes"] == item["tombstone_version"]


def test_a_fully_deleted_row_is_freed_and_reused() -> None:
    model = IndexModel(LAYOUT, capacity=2)
    applied(model, [embedding(1, 1, [1] * 4), embedding(2, 1, [2] * 4)], [tombstone(1, 2)])
    assert model.item(1) is None and model.num_tombstones == 1
    applied(model, [embedding(3, 1, [3] * 4)])
    assert model.capacity == 2 and emb_of(model, 3) == [3] * 4 and len(model) == 2


def test_capacity_grows_geometrically_and_keeps_rows() -> None:
    model = IndexModel(LAYOUT, capacity=1)
    for i in range(100):
        applied(model, [embedding(i, 1, [i] * 4)])
    assert model.capacity == 128 and len(model) == 100
    assert all(emb_of(model, i) == [i] * 4 for i in range(100))


def test_embeddings_of_another_model_version_are_rejected_untouched() -> None:
    model = IndexModel(LAYOUT, model_version=2)
    model.apply(batch_of([embedding(1, 1, [1] * 4, model_version=2)], LAYOUT))
    before = model.digest()
    stats = model.apply(
        batch_of([embedding(1, 9, [9] * 4, model_version=1), feature(LAYOUT, 5, 0, 1, 1.0)], LAYOUT)
    )
    assert stats.rejected == {"model_version_mismatch": 1} and stats.applied == 1
    assert emb_of(model, 1) == [1] * 4
    stats = model.apply(batch_of([embedding(7, 9, [9] * 4, model_version=3)], LAYOUT))
    assert stats.rejected == {"model_version_mismatch": 1} and model.item(7) is None
    assert model.digest() != before  # the feature of item 5 did apply
    assert model.item(5) is not None


def test_a_batch_of_another_layout_is_rejected_whole() -> None:
    model = IndexModel(LAYOUT)
    model.apply(batch_of([embedding(1, 1, [1] * 4)], LAYOUT))
    before = model.digest()
    other = wide_layout()
    stats = model.apply(batch_of([embedding(2, 1, [2] * 8), tombstone(1, 5)], other))
    assert stats.rejected == {"layout_hash": 2} and stats.applied == 0
    assert model.digest() == before


def test_decode_rejections_are_passed_through() -> None:
    model = IndexModel(LAYOUT)
    good = batch_of([embedding(1, 1, [1] * 4)], LAYOUT)
    stats = model.apply(replace(good, rejected={"bad_magic": 3}))
    assert stats.rejected == {"bad_magic": 3} and stats.applied == 1


@pytest.mark.parametrize(
    "change",
    [
        {"embeddings": np.zeros((1, 4), np.float64)},
        {"embeddings": np.zeros((1, 5), np.float32)},
        {"version": np.zeros(2, np.int64)},
    ],
    ids=["dtype", "dim", "length"],
)
def test_malformed_batches_raise_before_touching_a_tensor(change: dict) -> None:  # type: ignore[type-arg]
    model = IndexModel(LAYOUT)
    before = model.digest()
    with pytest.raises(IncompatibleBatchError):
        model.apply(replace(batch_of([embedding(1, 1, [1] * 4)], LAYOUT), **change))
    assert model.digest() == before


# ---------------------------------------------------------------- convergence


def oracle(deltas: list[Delta], layout: TensorLayout) -> dict[int, dict | None]:  # type: ignore[type-arg]
    """Final state per item recomputed from the set of deltas: per region the newest delta above the newest
    tombstone (first seen among equals), else the default at the tombstone's version."""
    by_item: dict[int, list[Delta]] = defaultdict(list)
    for d in deltas:
        by_item[d.item_id].append(d)
    return {item: _oracle_item(ds, layout) for item, ds in by_item.items()}


def _oracle_item(deltas: list[Delta], layout: TensorLayout) -> dict | None:  # type: ignore[type-arg]
    tomb = max((d.version for d in deltas if d.kind is DeltaKind.TOMBSTONE), default=-1)
    best: dict[int, Delta] = {}
    for d in deltas:
        if d.kind is DeltaKind.TOMBSTONE or d.version <= tomb:
            continue
        if d.region not in best or d.version > best[d.region].version:
            best[d.region] = d
    if not best:
        return None
    names = ["embedding", "eligibility", *(c.name for c in layout.feature_columns)]
    features = {
        c.name: best[2 + c.index].values[0] if 2 + c.index in best else c.default
        for c in layout.feature_columns
    }
    return {
        "valid": 0 in best,
        "embedding": best[0].values.tolist() if 0 in best else [0.0] * layout.embedding_dim,
        "features": features,
        "eligibility": best[1].values.tolist() if 1 in best else [0] * layout.eligibility_words,
        "versions": {n: best[r].version if r in best else tomb for r, n in enumerate(names)},
    }  # fmt: skip


def assert_matches_oracle(model: IndexModel, deltas: list[Delta]) -> None:
    for item_id, expected in oracle(deltas, LAYOUT).items():
        got = model.item(item_id)
        if expected is None:
            assert got is None, item_id
            continue
        assert got is not None, item_id
        assert {
            k: got[k].tolist() if k in ("embedding", "eligibility") else got[k] for k in expected
        } == expected


def apply_in_batches(model: IndexModel, deltas: list[Delta], rng: random.Random) -> None:
    i = 0
    while i < len(deltas):
        size = rng.choice([1, 3, 17, 64])
        model.apply(batch_of(deltas[i : i + size], LAYOUT))
        i += size


def shuffled_within_key(deltas: list[Delta], rng: random.Random) -> list[Delta]:
    """Each item's deltas in a new order, in the slots that item had (cross-item order kept)."""
    slots: dict[int, list[Delta]] = defaultdict(list)
    for d in deltas:
        slots[d.item_id].append(d)
    for ds in slots.values():
        rng.shuffle(ds)
    return [slots[d.item_id].pop() for d in deltas]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(50, 600))
def test_any_order_any_repetition_converges_to_the_oracle(seed: int, n: int) -> None:
    rng = random.Random(seed)
    stream = random_stream(LAYOUT, rng, n, num_items=rng.choice([3, 20, 80]))
    copies = {
        "in order": stream,
        "shuffled within key": shuffled_within_key(stream, rng),
        "shuffled": rng.sample(stream, len(stream)),
        "duplicated": stream + rng.sample(stream, len(stream)),
        "replayed from a checkpoint": stream[: n // 2] + stream[n // 4 :],
    }
    digests = {}
    for name, deltas in copies.items():
        model = IndexModel(LAYOUT, capacity=rng.choice([1, 16, 1024]))
        apply_in_batches(model, deltas, rng)
        digests[name] = model.digest()
        assert_matches_oracle(model, stream)
    assert len(set(digests.values())) == 1, digests


def test_a_replay_reports_everything_stale() -> None:
    stream = random_stream(LAYOUT, random.Random(9), 400)
    model = IndexModel(LAYOUT)
    first = model.apply(batch_of(stream, LAYOUT))
    again = model.apply(batch_of(stream, LAYOUT))
    assert first.applied + first.skipped_stale == len(stream)
    assert (again.applied, again.skipped_stale) == (0, len(stream))


# ---------------------------------------------------------------- atomic visibility

TORN = TensorLayout(
    embedding_dim=8,
    feature_columns=tuple(FeatureColumn(n, i) for i, n in enumerate(["a", "b", "c"])),
    exact_bits=(ExactBit("odd", 0),),
)
HOT_ITEMS = 64


def generation_batch(b: int) -> DecodedBatch:
    """Batch ``b`` sets every region of every hot item to ``b`` (eligibility: bit ``odd`` = b & 1) and adds two
    new cold items, so capacity keeps growing under the readers."""
    ids = np.arange(HOT_ITEMS, dtype=np.int64)
    n_emb, n_feat = HOT_ITEMS + 2, HOT_ITEMS * TORN.num_features
    emb_ids = np.concatenate([ids, [10_000 + 2 * b, 10_001 + 2 * b]])
    feat_ids, feat_cols = np.repeat(ids, TORN.num_features), np.tile(np.arange(TORN.num_features), HOT_ITEMS)
    kinds = [DeltaKind.EMBEDDING] * n_emb + [DeltaKind.FEATURE] * n_feat + [DeltaKind.ELIGIBILITY] * HOT_ITEMS
    versions = (
        [embedding_version(b)] * n_emb
        + [feature_version(b, 0)] * n_feat
        + [eligibility_version(b)] * HOT_ITEMS
    )
    embeddings = np.full((n_emb, 8), float(b), np.float32)
    embeddings[HOT_ITEMS:] = -1.0
    return DecodedBatch(
        layout_hash=TORN.layout_hash,
        kind=np.array(kinds, np.uint8),
        item_id=np.concatenate([emb_ids, feat_ids, ids]),
        region=np.concatenate([np.zeros(n_emb, np.int64), 2 + feat_cols, np.ones(HOT_ITEMS, np.int64)]),
        version=np.array(versions, np.int64),
        event_time_ms=np.full(len(kinds), b, np.int64),
        model_version=np.zeros(len(kinds), np.int64),
        source_index=np.arange(len(kinds), dtype=np.int64),
        embeddings=embeddings,
        feature_values=np.full(n_feat, float(b), np.float32),
        eligibility_words=np.full((HOT_ITEMS, 1), b & 1, np.int64),
    )  # fmt: skip


def observed_generation(model: IndexModel, odd_only: bool) -> int | None:
    """The single generation a query saw; fails if the hot items disagree (a torn read)."""
    result = model.retrieve(torch.ones(8), 4 * HOT_ITEMS, required_bits=["odd"] if odd_only else [])
    hot = result.item_ids < HOT_ITEMS
    seen = {*(result.scores[hot] / 8).tolist(), *result.features[hot].ravel().tolist()}
    assert hot.sum() in (0, HOT_ITEMS), f"{hot.sum()} of {HOT_ITEMS} hot items eligible: torn eligibility"
    assert len(seen) <= 1, f"one query saw generations {sorted(seen)}"
    return int(seen.pop()) if seen else None


def test_checker_catches_a_half_applied_batch() -> None:
    model = IndexModel(TORN)
    model.apply(generation_batch(1))
    half = generation_batch(2)
    model.apply(half.select(half.item_id % 2 == 0))
    with pytest.raises(AssertionError, match="saw generations"):
        observed_generation(model, odd_only=False)


def test_queries_never_see_a_half_applied_batch() -> None:
    model = IndexModel(TORN, capacity=1)
    model.apply(generation_batch(1))
    batches = [generation_batch(b) for b in range(2, 2002)]
    failures: list[BaseException] = []
    done = threading.Event()

    def query(odd_only: bool) -> None:
        last, seen = 0, 0
        try:
            while not done.is_set():
                g = observed_generation(model, odd_only)
                assert g is None or g >= last, f"generation went back from {last} to {g}"
                last, seen = g or last, seen + 1
            assert seen > 20, f"only {seen} queries ran"
        except BaseException as exc:
            failures.append(exc)

    readers = [threading.Thread(target=query, args=(odd,)) for odd in (False, True)]
    for t in readers:
        t.start()
    for batch in batches:
        model.apply(batch)
    done.set()
    for t in readers:
        t.join()
    assert not failures, failures[0]
    assert observed_generation(model, odd_only=False) == 2001 and model.capacity >= 2 * 2001
