"""The layout a feature set derives, and its hash: equal for equal layouts, different for any layout change."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from freshet.layout import BloomField, ExactBit
from freshet.spec import feature_set_from_yaml, load_feature_set
from freshet.spec.positions import assign_bit_positions

FEATURE_DEFS = Path(__file__).resolve().parent.parent / "feature_defs"

Defs = dict[str, Any]


# --- the example layout --------------------------------------------------------------------------


def test_feature_defs_layout_has_the_expected_columns_bits_and_bloom_blocks() -> None:
    layout = load_feature_set(FEATURE_DEFS).layout()
    assert [c.name for c in layout.feature_columns] == [
        "likes_1h",
        "shares_1h",
        "comments_1h",
        "views_10m",
        "interactions_1h",
        "unique_likers_1d",
        "dwell_mean_1h",
        "dwell_max_1h",
    ]
    assert [c.index for c in layout.feature_columns] == list(range(8))
    assert layout.exact_bits == (
        ExactBit("policy_ok", 0),
        ExactBit("nsfw", 1),
        ExactBit("is_video", 2),
        ExactBit("long_video", 3),
        ExactBit("family_safe", 4),
    )
    assert layout.bloom_fields == (BloomField("region", 64, 128, 3), BloomField("language", 192, 64, 2))
    assert layout.eligibility_words == 4
    assert (layout.embedding_dim, layout.embedding_dtype, layout.embedding_model) == (
        64,
        "float32",
        "two_tower",
    )
    assert [(t.column, t.weight) for t in layout.score_terms] == [(0, 0.4), (1, 0.3), (2, 0.2), (3, 0.1)]
    assert layout.num_regions == 2 + 8


def test_loading_twice_gives_the_same_hash() -> None:
    assert (
        load_feature_set(FEATURE_DEFS).layout().layout_hash
        == load_feature_set(FEATURE_DEFS).layout().layout_hash
    )


# --- positions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pinned", "positions"),
    [
        ([None, None, None], [0, 1, 2]),
        ([2, None, None], [2, 0, 1]),
        ([None, 0, None, 1], [2, 0, 3, 1]),
        ([63, None], [63, 0]),
    ],
)
def test_unpinned_bits_take_the_lowest_free_positions_in_order(
    pinned: list[int | None], positions: list[int]
) -> None:
    assert assign_bit_positions(pinned) == positions


def base_defs() -> Defs:
    return {
        "entity": {"name": "item", "key": "item_id"},
        "sources": [
            {
                "name": "events",
                "topic": "events",
                "event_time": "ts",
                "watermark": {"max_out_of_orderness": "5s", "idle_timeout": "30s"},
                "fields": {"action": "string", "dwell_ms": "number", "region": "strings", "lang": "string"},
            }
        ],
        "embedding": {"source": "events", "input_fields": ["action"], "dim": 8, "model": "two_tower"},
    }


def layout_of(defs: Defs) -> Any:
    return feature_set_from_yaml(yaml.safe_dump(defs)).layout()


def with_bits(bits: list[Defs], bloom: list[Defs] | None = None) -> Defs:
    return {**base_defs(), "eligibility": {"source": "events", "bits": bits, "bloom": bloom or []}}


def bit(name: str, position: int | None = None) -> Defs:
    rule: Defs = {"name": name, "when": {"field": "action", "eq": name}}
    return rule if position is None else {**rule, "bit": position}


def test_bloom_blocks_start_at_the_first_whole_word_after_the_exact_bits() -> None:
    bloom = [
        {"field": "region", "width_bits": 128, "num_hashes": 3},
        {"field": "lang", "width_bits": 64, "num_hashes": 1},
    ]
    assert [f.offset for f in layout_of(with_bits([bit("a", 70)], bloom)).bloom_fields] == [128, 256]
    assert [f.offset for f in layout_of(with_bits([bit("a")], bloom)).bloom_fields] == [64, 192]
    assert [f.offset for f in layout_of(with_bits([], bloom)).bloom_fields] == [0, 128]


def test_the_order_pinned_bits_are_written_in_does_not_change_the_hash() -> None:
    one = layout_of(with_bits([bit("a", 0), bit("b", 5)]))
    other = layout_of(with_bits([bit("b", 5), bit("a", 0)]))
    assert one.exact_bits == other.exact_bits == (ExactBit("a", 0), ExactBit("b", 5))
    assert one.layout_hash == other.layout_hash


def test_removing_an_unpinned_bit_moves_the_later_ones() -> None:
    assert layout_of(with_bits([bit("a"), bit("b"), bit("c")])).bit("c").position == 2
    assert layout_of(with_bits([bit("b"), bit("c")])).bit("c").position == 1


def test_columns_follow_file_names_then_position(tmp_path: Path) -> None:
    def feature(name: str) -> Defs:
        return {
            "name": name,
            "source": "events",
            "aggregation": "count",
            "window": {"kind": "tumbling", "size": "1h"},
        }

    (tmp_path / "0_base.yaml").write_text(yaml.safe_dump(base_defs()))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"features": [feature("b1"), feature("b2")]}))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"features": [feature("a1")]}))
    assert [c.name for c in load_feature_set(tmp_path).layout().feature_columns] == ["a1", "b1", "b2"]


# --- the hash, as a property ---------------------------------------------------------------------

NAMES = st.text(alphabet="abcdefghij_", min_size=1, max_size=8).map(lambda s: "f" + s)


@st.composite
def definitions(draw: st.DrawFn) -> Defs:
    """A complete, valid feature set in its YAML form."""
    defs = base_defs()
    defs["embedding"] |= {
        "dim": draw(st.integers(1, 512)),
        "dtype": draw(st.sampled_from(["float32", "float16", "bfloat16"])),
        "model": draw(st.sampled_from(["two_tower", "tower_b"])),
    }
    names = draw(st.lists(NAMES, min_size=0, max_size=6, unique=True))
    defs["features"] = [draw(feature_defs(name)) for name in names]
    bit_names = draw(st.lists(NAMES.map(lambda s: "b" + s), max_size=5, unique=True))
    pins = draw(st.permutations(range(16)))
    pinned = [pins[i] if draw(st.booleans()) else None for i in range(len(bit_names))]
    bloom_fields = draw(st.lists(st.sampled_from(["region", "lang"]), max_size=2, unique=True))
    defs["eligibility"] = {
        "source": "events",
        "bits": [bit(name, pin) for name, pin in zip(bit_names, pinned, strict=True)],
        "bloom": [
            {"field": f, "width_bits": 64 * draw(st.integers(1, 4)), "num_hashes": draw(st.integers(1, 4))}
            for f in bloom_fields
        ],
    }
    return defs


@st.composite
def feature_defs(draw: st.DrawFn, name: str) -> Defs:
    feature: Defs = {
        "name": name,
        "source": "events",
        "aggregation": draw(st.sampled_from(["count", "sum"])),
        "window": {"kind": "tumbling", "size": draw(st.sampled_from(["10m", "1h"]))},
        "default": draw(st.sampled_from([0, 0.5, -1, 2.25])),
    }
    if feature["aggregation"] == "sum":
        feature["field"] = "dwell_ms"
    if draw(st.booleans()):
        feature["score"] = {"weight": draw(st.floats(-2, 2, allow_nan=False)), "transform": "log1p"}
    return feature


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same data with every mapping's keys in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    definitions(), st.randoms(use_true_random=False), st.sampled_from([None, True, False]), st.integers(2, 6)
)
def test_equal_definitions_hash_equal_whatever_the_key_order_or_layout_of_the_yaml(
    defs: Defs, rng: random.Random, flow: bool | None, indent: int
) -> None:
    plain = yaml.safe_dump(defs, sort_keys=True)
    restyled = yaml.safe_dump(
        shuffled(defs, rng), sort_keys=False, default_flow_style=flow, indent=indent, width=60
    )
    if flow is False:  # every line a whole key or item: blank lines between them change nothing
        restyled = "# comment\n\n" + restyled.replace("\n", "\n\n")
    assert (
        feature_set_from_yaml(plain).layout().layout_hash
        == feature_set_from_yaml(restyled).layout().layout_hash
    )


Mutation = Callable[[Defs, random.Random], bool]
"""Changes ``defs`` in place; returns False when it does not apply to these definitions."""


def _dim(d: Defs, rng: random.Random) -> bool:
    d["embedding"]["dim"] += 1
    return True


def _dtype(d: Defs, rng: random.Random) -> bool:
    d["embedding"]["dtype"] = rng.choice(
        [t for t in ("float32", "float16", "bfloat16") if t != d["embedding"]["dtype"]]
    )
    return True


def _model(d: Defs, rng: random.Random) -> bool:
    d["embedding"]["model"] += "_v2"
    return True


def _add_column(d: Defs, rng: random.Random) -> bool:
    d["features"].insert(rng.randint(0, len(d["features"])), {**base_feature(), "name": "added"})
    return True


def _rename_column(d: Defs, rng: random.Random) -> bool:
    if not d["features"]:
        return False
    rng.choice(d["features"])["name"] += "_x"
    return True


def _reorder_columns(d: Defs, rng: random.Random) -> bool:
    if len(d["features"]) < 2:
        return False
    i, j = rng.sample(range(len(d["features"])), 2)
    d["features"][i], d["features"][j] = d["features"][j], d["features"][i]
    return True


def _default(d: Defs, rng: random.Random) -> bool:
    if not d["features"]:
        return False
    rng.choice(d["features"])["default"] += 1
    return True


def _move_bit(d: Defs, rng: random.Random) -> bool:
    bits = d["eligibility"]["bits"]
    if not bits:
        return False
    taken = assign_bit_positions([b.get("bit") for b in bits])
    rng.choice(bits)["bit"] = min(set(range(64)) - set(taken))
    return True


def _bloom_width(d: Defs, rng: random.Random) -> bool:
    if not d["eligibility"]["bloom"]:
        return False
    rng.choice(d["eligibility"]["bloom"])["width_bits"] += 64
    return True


def _bloom_hashes(d: Defs, rng: random.Random) -> bool:
    if not d["eligibility"]["bloom"]:
        return False
    rng.choice(d["eligibility"]["bloom"])["num_hashes"] += 1
    return True


def base_feature() -> Defs:
    return {"source": "events", "aggregation": "count", "window": {"kind": "tumbling", "size": "1h"}}


LAYOUT_CHANGES = [
    _dim,
    _dtype,
    _model,
    _add_column,
    _rename_column,
    _reorder_columns,
    _default,
    _move_bit,
    _bloom_width,
    _bloom_hashes,
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(definitions(), st.sampled_from(LAYOUT_CHANGES), st.randoms(use_true_random=False))
def test_every_layout_change_changes_the_hash(defs: Defs, change: Mutation, rng: random.Random) -> None:
    changed = copy.deepcopy(defs)
    assume(change(changed, rng))
    assert layout_of(changed).layout_hash != layout_of(defs).layout_hash


def _score_weight(d: Defs, rng: random.Random) -> bool:
    feature = d["features"][0] if d["features"] else None
    if feature is None:
        return False
    feature["score"] = {"weight": rng.uniform(-3, 3), "transform": rng.choice(["none", "log1p"])}
    return True


def _window(d: Defs, rng: random.Random) -> bool:
    if not d["features"]:
        return False
    rng.choice(d["features"])["window"] = {"kind": "sliding", "size": "2h", "slide": "10m"}
    return True


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(definitions(), st.sampled_from([_score_weight, _window]), st.randoms(use_true_random=False))
def test_score_and_window_changes_keep_the_hash(defs: Defs, change: Mutation, rng: random.Random) -> None:
    changed = copy.deepcopy(defs)
    assume(change(changed, rng))
    assert layout_of(changed).layout_hash == layout_of(defs).layout_hash


def test_a_negative_zero_default_is_the_same_layout_as_zero() -> None:
    def defs(default: float) -> Defs:
        return {**base_defs(), "features": [{**base_feature(), "name": "f", "default": default}]}

    assert layout_of(defs(-0.0)).layout_hash == layout_of(defs(0)).layout_hash
