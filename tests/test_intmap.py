"""The array-at-a-time hash map behind the id -> row map and the tombstones, against a dict."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freshet.intmap import IntMap

keys = st.integers(-(2**63), 2**63 - 1) | st.integers(-50, 50)
ops = st.lists(
    st.tuples(st.sampled_from(["put", "drop"]), st.lists(keys, max_size=40, unique=True)), max_size=30
)


@settings(max_examples=200, deadline=None)
@given(ops, st.lists(keys, max_size=40))
def test_behaves_like_a_dict(operations: list[tuple[str, list[int]]], probes: list[int]) -> None:
    table, model = IntMap(), {}
    for step, (op, ks) in enumerate(operations):
        array = np.array(ks, dtype=np.int64)
        if op == "put":
            values = np.arange(len(ks), dtype=np.int64) + 1000 * step
            table.put(array, values)
            model.update(zip(ks, values.tolist(), strict=True))
        else:
            present = np.array([k for k in ks if k in model], dtype=np.int64)
            table.drop(present)
            for k in present.tolist():
                del model[k]
    assert len(table) == len(model)
    everything = np.array(sorted(set(probes) | set(model)), dtype=np.int64)
    assert table.get(everything, missing=-99).tolist() == [model.get(k, -99) for k in everything.tolist()]
    got_keys, got_values = table.arrays()
    assert dict(zip(got_keys.tolist(), got_values.tolist(), strict=True)) == model


def test_a_million_keys_round_trip() -> None:
    ids = np.random.default_rng(0).permutation(10**6).astype(np.int64) * 7919
    table = IntMap(ids, np.arange(ids.shape[0]))
    assert np.array_equal(table.get(ids), np.arange(ids.shape[0]))
    table.drop(ids[::2])
    assert len(table) == ids.shape[0] // 2 and (table.get(ids[::2]) == -1).all()
