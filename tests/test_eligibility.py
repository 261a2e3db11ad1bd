"""Eligibility words from item attributes: each predicate kind, Bloom bits, and a bare layout as a query mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from freshet.bits import bloom_positions, positions_from_words
from freshet.eligibility import EligibilityEncoder, eligibility_words
from freshet.spec import Predicate, load_feature_set

FEATURE_DEFS = Path(__file__).resolve().parent.parent / "feature_defs"
PREDICATE: TypeAdapter[Any] = TypeAdapter(Predicate)

APPROVED_VIDEO = {
    "policy_status": "approved",
    "nsfw": False,
    "media_type": "video",
    "duration_s": 120,
    "region": ["PT", "BR"],
    "language": "pt",
}


@pytest.mark.parametrize(
    ("rule", "attributes", "holds"),
    [
        # eq keeps JSON types apart: true is not 1, "1" is not 1; 1 is 1.0
        ({"field": "status", "eq": "approved"}, {"status": "approved"}, True),
        ({"field": "status", "eq": "approved"}, {"status": "pending"}, False),
        ({"field": "status", "eq": "approved"}, {}, False),
        ({"field": "nsfw", "eq": True}, {"nsfw": True}, True),
        ({"field": "nsfw", "eq": True}, {"nsfw": 1}, False),
        ({"field": "count", "eq": 1}, {"count": 1.0}, True),
        ({"field": "count", "eq": 1}, {"count": "1"}, False),
        # in: the field is one of the values
        ({"field": "media", "in": ["video", "short_video"]}, {"media": "short_video"}, True),
        ({"field": "media", "in": ["video", "short_video"]}, {"media": "image"}, False),
        ({"field": "media", "in": ["video"]}, {"media": None}, False),
        # contains: a list field includes the value; one string counts as a list of one
        ({"field": "tags", "contains": "sports"}, {"tags": ["news", "sports"]}, True),
        ({"field": "tags", "contains": "sports"}, {"tags": ["news"]}, False),
        ({"field": "tags", "contains": "sports"}, {"tags": "sports"}, True),
        ({"field": "tags", "contains": "sports"}, {"tags": "sportswear"}, False),
        ({"field": "tags", "contains": "sports"}, {}, False),
        # range: inclusive bounds on numbers, never on booleans or strings
        ({"field": "d", "range": {"min": 60}}, {"d": 60}, True),
        ({"field": "d", "range": {"min": 60}}, {"d": 59.9}, False),
        ({"field": "d", "range": {"max": 10}}, {"d": 10}, True),
        ({"field": "d", "range": {"max": 10}}, {"d": 11}, False),
        ({"field": "d", "range": {"min": 1, "max": 2}}, {"d": 1.5}, True),
        ({"field": "d", "range": {"min": 0, "max": 2}}, {"d": True}, False),
        ({"field": "d", "range": {"min": 0}}, {"d": "5"}, False),
        # all / any / not; a missing field makes a test false, so its negation true
        ({"all": [{"field": "a", "eq": 1}, {"field": "b", "eq": 2}]}, {"a": 1, "b": 2}, True),
        ({"all": [{"field": "a", "eq": 1}, {"field": "b", "eq": 2}]}, {"a": 1, "b": 3}, False),
        ({"any": [{"field": "a", "eq": 1}, {"field": "b", "eq": 2}]}, {"a": 0, "b": 2}, True),
        ({"any": [{"field": "a", "eq": 1}, {"field": "b", "eq": 2}]}, {"a": 0, "b": 0}, False),
        ({"not": {"field": "nsfw", "eq": True}}, {"nsfw": True}, False),
        ({"not": {"field": "nsfw", "eq": True}}, {}, True),
        (
            {"not": {"any": [{"field": "a", "eq": 1}, {"not": {"field": "b", "eq": 2}}]}},
            {"a": 0, "b": 2},
            True,
        ),
    ],
)
def test_predicate(rule: dict[str, Any], attributes: dict[str, Any], holds: bool) -> None:
    assert PREDICATE.validate_python(rule).matches(attributes) is holds


@pytest.mark.parametrize(
    ("attributes", "bits"),
    [
        (APPROVED_VIDEO, {"policy_ok", "is_video", "long_video", "family_safe"}),
        ({**APPROVED_VIDEO, "nsfw": True}, {"policy_ok", "nsfw", "is_video", "long_video"}),
        (
            {**APPROVED_VIDEO, "media_type": "short_video", "duration_s": 30},
            {"policy_ok", "is_video", "family_safe"},
        ),
        ({"policy_status": "removed", "media_type": "image"}, set()),
        ({}, set()),
    ],
)
def test_exact_bits_follow_the_declared_rules(attributes: dict[str, Any], bits: set[str]) -> None:
    fs = load_feature_set(FEATURE_DEFS)
    layout = fs.layout()
    set_positions = set(positions_from_words(eligibility_words(fs, attributes)))
    exact = {b.name for b in layout.exact_bits if b.position in set_positions}
    assert exact == bits


@pytest.mark.parametrize(
    ("field", "value", "values"),
    [("region", "PT", ["PT"]), ("region", ["PT", "BR"], ["PT", "BR"]), ("language", "pt", ["pt"])],
)
def test_bloom_bits_are_the_values_positions_and_nothing_else(
    field: str, value: Any, values: list[str]
) -> None:
    fs = load_feature_set(FEATURE_DEFS)
    layout = fs.layout()
    bloom = layout.bloom(field)
    words = eligibility_words(fs, {field: value})
    expected = {p for v in values for p in bloom_positions(bloom, v)}
    set_positions = set(positions_from_words(words))

    assert words.dtype == np.int64 and words.shape == (layout.eligibility_words,)
    assert expected and set_positions == expected
    assert all(bloom.offset <= p < bloom.offset + bloom.width_bits for p in set_positions)


def test_every_bloom_block_and_the_exact_bits_together() -> None:
    fs = load_feature_set(FEATURE_DEFS)
    layout = fs.layout()
    positions = set(positions_from_words(eligibility_words(fs, APPROVED_VIDEO)))
    region, language = layout.bloom("region"), layout.bloom("language")
    bloom = {p for v in ("PT", "BR") for p in bloom_positions(region, v)} | set(
        bloom_positions(language, "pt")
    )
    exact = {layout.bit(n).position for n in ("policy_ok", "is_video", "long_video", "family_safe")}
    assert positions == exact | bloom


def test_missing_and_non_string_bloom_values_set_nothing() -> None:
    fs = load_feature_set(FEATURE_DEFS)
    assert positions_from_words(eligibility_words(fs, {"region": None, "language": 7})) == []
    assert positions_from_words(eligibility_words(fs, {"region": [3, None]})) == []


def test_a_bare_layout_builds_a_query_mask_from_flags_and_values() -> None:
    fs = load_feature_set(FEATURE_DEFS)
    layout = fs.layout()
    mask = eligibility_words(layout, {"policy_ok": True, "nsfw": False, "region": "PT"})
    expected = {layout.bit("policy_ok").position, *bloom_positions(layout.bloom("region"), "PT")}
    assert set(positions_from_words(mask)) == expected


def test_an_item_matches_a_query_mask_exactly_when_it_has_every_bit() -> None:
    fs = load_feature_set(FEATURE_DEFS)
    encoder, query = EligibilityEncoder.of(fs), EligibilityEncoder.of(fs.layout())
    item = encoder.words(APPROVED_VIDEO)
    for wanted, matches in [
        ({"policy_ok": True, "region": "PT"}, True),
        ({"policy_ok": True, "language": "pt"}, True),
        ({"nsfw": True}, False),
        (
            {"region": "US"},
            False,
        ),  # a Bloom false positive is possible in general; these fixed hashes give none
    ]:
        mask = query.words(wanted)
        assert bool(np.all((item & mask) == mask)) is matches, wanted


def test_the_encoder_is_pure() -> None:
    fs = load_feature_set(FEATURE_DEFS)
    attributes = dict(APPROVED_VIDEO)
    first = eligibility_words(fs, attributes)
    assert np.array_equal(first, eligibility_words(fs, attributes))
    assert attributes == APPROVED_VIDEO
