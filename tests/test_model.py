"""Retrieval against a brute-force numpy reference, the digest, item lookups and query errors."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from index_helpers import eligibility, embedding, feature, random_stream, small_layout, tombstone, wide_layout

from freshet import retrieval
from freshet.bits import bloom_positions, positions_from_words, words_from_positions
from freshet.deltas import batch_of
from freshet.layout import ScoreTerm, TensorLayout
from freshet.model import IndexModel
from freshet.model_tensors import to_storage
from freshet.retrieval import QueryError

#: score terms without log1p and with binary-exact weights: every score is exact in float32, so the reference
#: can demand identical rankings, ties included (log1p terms are checked on their own below)
LAYOUT = replace(small_layout(), score_terms=(ScoreTerm(0, 0.5, "none"), ScoreTerm(2, -2.0, "none")))
REGIONS = ["PT", "BR", "US", "DE", "FR", "JP"]


@dataclass
class Item:
    item_id: int
    embedding: np.ndarray
    features: np.ndarray
    bits: set[str]
    regions: set[str]

    def positions(self, layout: TensorLayout) -> set[int]:
        exact = {layout.bit(b).position for b in self.bits}
        return exact | {p for r in self.regions for p in bloom_positions(layout.bloom("region"), r)}


def make_items(rng: np.random.Generator, n: int) -> list[Item]:
    """Integer-valued embeddings and features keep every score exact in float32, so ties are real ties."""
    names = [b.name for b in LAYOUT.exact_bits]
    return [
        Item(
            item_id=int(i * 7 + 3),
            embedding=rng.integers(-3, 4, LAYOUT.embedding_dim).astype(np.float32),
            features=rng.integers(0, 4, LAYOUT.num_features).astype(np.float32),
            bits={b for b in names if rng.random() < 0.5},
            regions={r for r in REGIONS if rng.random() < 0.3},
        )
        for i in range(n)
    ]


def load(items: list[Item], layout: TensorLayout = LAYOUT, capacity: int = 8) -> IndexModel:
    model = IndexModel(layout, capacity=capacity)
    deltas = []
    for it in items:
        deltas.append(embedding(it.item_id, 1, it.embedding))
        deltas += [feature(layout, it.item_id, c, 1, float(v)) for c, v in enumerate(it.features)]
        words = words_from_positions(it.positions(layout), layout.eligibility_words)
        deltas.append(eligibility(it.item_id, 1, words))
    stats = model.apply(batch_of(deltas, layout))
    assert stats.applied == len(deltas)
    return model


def reference(items: list[Item], query: np.ndarray, k: int, required_bits=(), excluded_bits=(), bloom=None):  # type: ignore[no-untyped-def]
    """Brute force: score every item in numpy, filter by bit positions, sort by (-score, id)."""
    layout, bloom = LAYOUT, bloom or {}
    rows = []
    for it in items:
        pos = set(positions_from_words(words_from_positions(it.positions(layout), layout.eligibility_words)))
        if not all(layout.bit(b).position in pos for b in required_bits):
            continue
        if any(layout.bit(b).position in pos for b in excluded_bits):
            continue
        fields = [any(set(bloom_positions(layout.bloom(f), v)) <= pos for v in vs) for f, vs in bloom.items()]
        if not all(fields):
            continue
        terms = [t.weight * (np.log1p(max(it.features[t.column], 0)) if t.transform == "log1p" else it.features[t.column])
                 for t in layout.score_terms]  # fmt: skip
        rows.append((-(float(np.dot(it.embedding, query)) + float(np.float32(sum(terms)))), it.item_id))
    rows.sort()
    return [item_id for _, item_id in rows[:k]], [-s for s, _ in rows[:k]]


FILTERS = [
    {},
    {"required_bits": ["safe"]},
    {"required_bits": ["safe", "en"], "excluded_bits": ["kids"]},
    {"excluded_bits": ["pt", "en"]},
    {"bloom": {"region": ["PT"]}},
    {"bloom": {"region": ["PT", "BR", "US"]}, "required_bits": ["en"]},
    {"required_bits": ["safe", "en", "pt", "kids"], "bloom": {"region": REGIONS}},
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "none")
def test_retrieve_equals_the_numpy_reference(seed: int, filters: dict) -> None:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    items = make_items(rng, 300)
    model = load(items)
    for k in (1, 10, 500):
        query = rng.integers(-2, 3, LAYOUT.embedding_dim).astype(np.float32)
        result = model.retrieve(torch.from_numpy(query), k, **filters)
        ids, scores = reference(items, query, k, **filters)
        assert result.item_ids.tolist() == ids
        np.testing.assert_allclose(result.scores, scores, rtol=1e-6)
        by_id = {it.item_id: it.features for it in items}
        assert [by_id[i].tolist() for i in ids] == result.features.tolist()


def test_the_sampled_threshold_path_equals_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny sample the threshold path runs on 600 items; it must agree exactly (ties included), and
    both its outcomes must occur: enough eligible rows above the threshold, or a fall back to the full filter."""
    monkeypatch.setattr(retrieval, "SAMPLE_ROWS", 16)
    monkeypatch.setattr(retrieval, "OVERSAMPLE", 1)  # estimates fall short often: the check must catch it
    outcomes, original = [], retrieval._above_sampled_threshold

    def spy(*args):  # type: ignore[no-untyped-def]
        rows = original(*args)
        outcomes.append(rows is not None)
        return rows

    monkeypatch.setattr(retrieval, "_above_sampled_threshold", spy)
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        items = make_items(rng, 600)
        model = load(items)
        for filters in FILTERS:
            for k in (1, 5, 10, 40, 700):
                query = rng.integers(-2, 3, LAYOUT.embedding_dim).astype(np.float32)
                result = model.retrieve(torch.from_numpy(query), k, **filters)
                assert result.item_ids.tolist() == reference(items, query, k, **filters)[0], (
                    seed,
                    filters,
                    k,
                )
    assert set(outcomes) == {True, False}


def test_ties_rank_by_ascending_item_id() -> None:
    items = [
        Item(i, np.ones(4, np.float32), np.zeros(3, np.float32), set(), set()) for i in (50, 7, 31, 2, 99)
    ]
    model = load(items)
    assert model.retrieve(torch.ones(4), 3).item_ids.tolist() == [2, 7, 31]
    assert model(torch.ones(4), 10).item_ids.tolist() == [2, 7, 31, 50, 99]


def test_only_live_items_with_an_embedding_are_retrieved() -> None:
    model = IndexModel(LAYOUT)
    model.apply(
        batch_of(
            [embedding(1, 5, [1, 0, 0, 0]), embedding(2, 5, [2, 0, 0, 0]), feature(LAYOUT, 3, 0, 5, 9.0)],
            LAYOUT,
        )
    )
    model.apply(batch_of([tombstone(2, 6)], LAYOUT))
    assert model.retrieve(torch.tensor([1.0, 0, 0, 0]), 10).item_ids.tolist() == [1]
    assert len(model) == 1


def test_score_terms_add_transformed_features() -> None:
    layout = small_layout()  # likes: 0.25 * log1p, ctr: 2.0 * none
    model = IndexModel(layout)
    deltas = [embedding(1, 1, [1, 0, 0, 0]), feature(layout, 1, 0, 1, 10.0), feature(layout, 1, 2, 1, -3.0)]
    model.apply(batch_of([*deltas, embedding(2, 1, [0, 0, 0, 0]), feature(layout, 2, 0, 1, -5.0)], layout))
    result = model.retrieve(torch.tensor([2.0, 0, 0, 0]), 2)
    expected_1 = 2.0 + 0.25 * np.log1p(10.0) + 2.0 * -3.0
    expected_2 = 0.0 + 0.25 * np.log1p(0.0) + 2.0 * 0.5  # negative likes count as 0; ctr keeps its default
    order = np.argsort(-np.array([expected_1, expected_2]))
    assert result.item_ids.tolist() == [[1, 2][i] for i in order]
    np.testing.assert_allclose(result.scores, np.array([expected_1, expected_2])[order], rtol=1e-6)


BAD_QUERIES = [
    ({"required_bits": ["nope"]}, "unknown exact bit 'nope'"),
    ({"excluded_bits": "safe"}, "must be a list"),
    ({"bloom": {"city": ["x"]}}, "unknown Bloom field 'city'"),
    ({"bloom": {"region": []}}, "non-empty list"),
    ({"k": 0}, "k must be positive"),
    ({"query": torch.ones(5)}, r"shape \[4\]"),
    ({"query": torch.tensor([1.0, float("nan"), 0, 0])}, "NaN"),
]


@pytest.mark.parametrize(("args", "message"), BAD_QUERIES, ids=[m for _, m in BAD_QUERIES])
def test_bad_queries_raise_query_error(args: dict, message: str) -> None:  # type: ignore[type-arg]
    model = load(make_items(np.random.default_rng(0), 5))
    call = {"query": torch.ones(4), "k": 3, **args}
    with pytest.raises(QueryError, match=message):
        model.retrieve(**call)


def test_empty_model_returns_nothing() -> None:
    result = IndexModel(LAYOUT).retrieve(torch.ones(4), 5, required_bits=["safe"])
    assert len(result) == 0 and result.features.shape == (0, 3)


def test_item_shows_one_row_by_name() -> None:
    model = IndexModel(LAYOUT)
    model.apply(
        batch_of(
            [embedding(4, 2, [1, 2, 3, 4]), feature(LAYOUT, 4, 1, 3, 7.0), eligibility(4, 2, [5])], LAYOUT
        )
    )
    item = model.item(4)
    assert item is not None and item["valid"]
    assert item["embedding"].tolist() == [1, 2, 3, 4]
    assert item["features"] == {"likes": 0.0, "shares": 7.0, "ctr": 0.5}
    assert item["eligibility"].tolist() == [5]
    assert item["versions"]["shares"] == batch_of([feature(LAYOUT, 4, 1, 3, 7.0)], LAYOUT).version[0]
    assert item["versions"]["likes"] == -1
    assert model.item(5) is None


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_layouts_store_rounded_embeddings(dtype: str) -> None:
    layout = small_layout(embedding_dtype=dtype)
    model = IndexModel(layout)
    model.apply(
        batch_of([embedding(1, 1, [1.0, 0.333, -2.0, 8.0]), embedding(2, 1, [0.0, 0.0, 1.0, 0.0])], layout)
    )
    expected = torch.tensor([1.0, 0.333, -2.0, 8.0]).to(getattr(torch, dtype)).float()
    assert model.item(1)["embedding"].tolist() == expected.tolist()  # type: ignore[index]
    assert model.retrieve(torch.tensor([1.0, 0, 0, 1]), 1).item_ids.tolist() == [1]


# ---------------------------------------------------------------- digest


def test_digest_ignores_order_capacity_and_batching() -> None:
    stream = random_stream(LAYOUT, random.Random(3), 1500)
    shuffled = random.Random(4).sample(stream, len(stream))
    a, b = IndexModel(LAYOUT, capacity=1), IndexModel(LAYOUT, capacity=4096)
    for i in range(0, len(stream), 250):
        a.apply(batch_of(stream[i : i + 250], LAYOUT))
    for i in range(0, len(shuffled), 9):
        b.apply(batch_of(shuffled[i : i + 9], LAYOUT))
    assert a.capacity != b.capacity
    assert a.digest() == b.digest()


@pytest.mark.parametrize(
    "extra",
    [
        embedding(1, 99, [0, 0, 0, 1]),
        feature(LAYOUT, 1, 2, 99, 1.0),
        eligibility(1, 99, [1]),
        tombstone(12345, 1),  # a tombstone of an item never seen is state too
    ],
    ids=lambda d: d.kind.name,
)
def test_digest_sees_every_kind_of_change(extra) -> None:  # type: ignore[no-untyped-def]
    base = [embedding(1, 5, [1, 1, 1, 1]), feature(LAYOUT, 1, 2, 5, 3.0), eligibility(1, 5, [3])]
    a, b = IndexModel(LAYOUT), IndexModel(LAYOUT)
    a.apply(batch_of(base, LAYOUT))
    b.apply(batch_of([*base, extra], LAYOUT))
    assert a.digest() != b.digest()


def test_digest_covers_the_model_version_and_layout() -> None:
    assert IndexModel(LAYOUT).digest() != IndexModel(LAYOUT, model_version=1).digest()
    assert IndexModel(LAYOUT).digest() != IndexModel(wide_layout()).digest()


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=50))
def test_bfloat16_rounding_matches_torch(values: list[float]) -> None:
    array = np.array(values, dtype=np.float32)
    ours = to_storage(array, "bfloat16")
    theirs = torch.from_numpy(array).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert ours.tolist() == theirs.tolist()
