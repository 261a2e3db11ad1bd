"""The feature-definition language: bad definitions say exactly what is wrong, good ones load."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from freshet.cli import main as cli_main
from freshet.errors import FreshetError
from freshet.spec import (
    DefinitionFile,
    FeatureSet,
    Sliding,
    SpecError,
    feature_set_from_yaml,
    format_duration,
    json_schema,
    load_feature_set,
    parse_duration,
    validate_paths,
)
from freshet.spec.durations import UNIT_MS

ROOT = Path(__file__).resolve().parent.parent
FEATURE_DEFS = ROOT / "feature_defs"
BAD_DEFS = Path(__file__).resolve().parent / "fixtures" / "bad_defs"
BAD_FIXTURES = sorted(p for p in BAD_DEFS.iterdir() if p.suffix == ".yaml" or p.is_dir())

#: The cases the table must cover; a fixture that disappears fails here, not silently.
REQUIRED_FIXTURES = {
    "unknown_key.yaml",
    "slide_not_dividing_size.yaml",
    "duplicate_feature_names.yaml",
    "colliding_bits.yaml",
    "unknown_source.yaml",
    "negative_lateness.yaml",
    "wrong_types.yaml",
    "side_output_without_topic.yaml",
    "bad_duration.yaml",
    "yaml_syntax_error.yaml",
    "many_problems.yaml",
}


def expected_problems(fixture: Path) -> list[str]:
    """The ``# expect: ...`` lines kept at the end of a fixture (of every file of a fixture directory)."""
    files = sorted(fixture.glob("*.yaml")) if fixture.is_dir() else [fixture]
    prefix = "# expect: "
    return [
        line.removeprefix(prefix)
        for f in files
        for line in f.read_text().splitlines()
        if line.startswith(prefix)
    ]


def test_every_required_bad_case_has_a_fixture() -> None:
    assert {p.name for p in BAD_FIXTURES} >= REQUIRED_FIXTURES


@pytest.mark.parametrize("fixture", BAD_FIXTURES, ids=lambda p: p.name)
def test_bad_definitions_report_exactly_the_expected_problems(
    fixture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = expected_problems(fixture)
    assert expected, f"{fixture.name} keeps no '# expect:' lines"
    monkeypatch.chdir(BAD_DEFS)  # so problems name the fixture as a person would: relative to here

    assert validate_paths([Path(fixture.name)]) == expected
    with pytest.raises(SpecError) as raised:
        load_feature_set(fixture.name)
    assert raised.value.problems == expected


def test_several_problems_are_all_reported_in_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BAD_DEFS)
    problems = validate_paths([Path("many_problems.yaml")])
    for where in [
        "sources[0].partitions: unknown key",
        "features[0].window.slide: 7m must divide size 1h",
        "features[4].window.size: '10mins' is not a duration",
        "features[4].allowed_lateness: -1m is negative",
        "features[5].late.topic: policy side_output",
        "embedding.dim: expected an integer",
        "features[2].name: feature 'likes_1h' is already declared",
        "features[3].source: unknown source 'shares'",
        "eligibility.bits[1].bit: 0 is already taken",
    ]:
        assert any(p.startswith(f"many_problems.yaml: {where}") for p in problems), where
    assert len(problems) == 9


def test_spec_error_is_a_freshet_error_listing_every_problem() -> None:
    error = SpecError(["a.yaml: x: one", "a.yaml: y: two"])
    assert isinstance(error, FreshetError)
    assert error.problems == ["a.yaml: x: one", "a.yaml: y: two"]
    assert str(error).splitlines()[1:] == error.problems


def test_a_missing_path_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    assert validate_paths([tmp_path / "nope"]) == [f"{tmp_path / 'nope'}: no such file or directory"]
    assert validate_paths([tmp_path]) == [
        f"{tmp_path}: no *.yaml files here; point at feature_defs/ or a file"
    ]


def test_each_path_is_validated_as_its_own_feature_set() -> None:
    problems = validate_paths([FEATURE_DEFS, BAD_DEFS / "unknown_source.yaml"])
    assert len(problems) == 2
    assert all(p.startswith(str(BAD_DEFS / "unknown_source.yaml")) for p in problems)


# --- the example definitions --------------------------------------------------------------------


def test_feature_defs_validate_with_no_problems() -> None:
    assert validate_paths([FEATURE_DEFS]) == []


def test_feature_defs_merge_every_file_in_file_name_order() -> None:
    fs = load_feature_set(FEATURE_DEFS)
    assert fs.entity.key == "item_id"
    assert [s.topic for s in fs.sources] == ["items.published", "engagement", "item.attributes"]
    assert fs.embedding.dim == 64 and fs.embedding.model == "two_tower"
    assert fs.feature("likes_1h").window == Sliding.model_validate(
        {"kind": "sliding", "size": "1h", "slide": "5m"}
    )
    assert fs.feature("views_10m").late.topic == "engagement.late"
    assert fs.feature("unique_likers_1d").aggregation == "approx_distinct"


def test_cli_validate_and_schema_accept_the_feature_defs(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["validate", str(FEATURE_DEFS)]) == 0
    assert "ok (layout " in capsys.readouterr().out
    assert cli_main(["schema"]) == 0
    assert '"title": "freshet feature definitions"' in capsys.readouterr().out


def test_the_feature_set_dumps_to_yaml_that_loads_back_equal() -> None:
    fs = load_feature_set(FEATURE_DEFS)
    text = yaml.safe_dump(fs.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
    again = feature_set_from_yaml(text)
    assert again == fs
    assert again.layout().layout_hash == fs.layout().layout_hash
    assert "size: 1h" in text  # durations dump as written, not as milliseconds


def test_models_are_frozen_and_validation_does_not_change_its_input() -> None:
    raw = yaml.safe_load((BAD_DEFS / "many_problems.yaml").read_text())
    before = copy.deepcopy(raw)
    with pytest.raises(ValidationError):
        DefinitionFile.model_validate(raw)
    assert raw == before
    fs = load_feature_set(FEATURE_DEFS)
    with pytest.raises(ValidationError, match="frozen"):
        fs.features[0].name = "renamed"  # type: ignore[misc]


def test_constructing_an_inconsistent_feature_set_raises_spec_error() -> None:
    fs = load_feature_set(FEATURE_DEFS)
    twice = fs.model_dump(by_alias=True)
    twice["features"] = [*twice["features"], twice["features"][0]]
    with pytest.raises(SpecError) as raised:
        FeatureSet.model_validate(twice)
    assert raised.value.problems == [
        "feature set: features[8].name: feature 'likes_1h' is already declared at features[0]; rename one"
    ]


def test_the_example_in_the_package_docstring_is_valid() -> None:
    import freshet.spec

    doc = freshet.spec.__doc__ or ""
    example = doc.split("::", 1)[1].split("Problems read", 1)[0]
    fs = feature_set_from_yaml(textwrap.dedent(example))
    assert [c.name for c in fs.layout().feature_columns] == ["likes_1h"]


@pytest.mark.parametrize(
    ("feature", "problem"),
    [
        # an unknown key that happens to be a window kind is still named as written
        (
            {"window": {"kind": "tumbling", "size": "1h", "sliding": 1}},
            "window.sliding: unknown key 'sliding'",
        ),
        # YAML 1.1 reads an unquoted no/yes/on/off as a boolean: the message says so
        (
            {"name": False},
            "name: expected a string, got False (YAML reads yes/no/on/off/true/false as booleans",
        ),
        ({"window": {"kind": "sliding", "size": "1h"}}, "window.slide: required, but missing"),
        ({"window": {"size": "1h"}}, "window.kind: required, but missing"),
        (
            {"filter": {"not": {"field": "action", "eq": [1]}}},
            "filter.not.eq: expected a string, number or true/false",
        ),
        ({"filter": {"field": "action", "range": {}}}, "filter.range: give min, max or both"),
        ({"default": float("inf")}, "default: expected a finite number, got inf"),
    ],
)
def test_messages_name_the_key_as_written(feature: dict[str, Any], problem: str) -> None:
    base = {
        "name": "f",
        "source": "engagement",
        "aggregation": "count",
        "window": {"kind": "tumbling", "size": "1h"},
    }
    with pytest.raises(SpecError) as raised:
        feature_set_from_yaml(yaml.safe_dump({"features": [{**base, **feature}]}), "x.yaml")
    assert any(p.startswith(f"x.yaml: features[0].{problem}") for p in raised.value.problems), (
        raised.value.problems
    )


def test_a_file_that_is_not_a_mapping_is_one_problem() -> None:
    with pytest.raises(SpecError) as raised:
        feature_set_from_yaml("- just\n- a list\n", "x.yaml")
    assert raised.value.problems == [
        "x.yaml: expected a mapping of sections (entity, sources, features, embedding, eligibility), got ['just', 'a list']"
    ]


# --- the JSON schema -----------------------------------------------------------------------------


def test_json_schema_accepts_the_example_files_and_completes_keys() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for file in FEATURE_DEFS.glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(file.read_text()), schema)
    assert set(schema["properties"]) == {"entity", "sources", "features", "embedding", "eligibility"}
    sliding = schema["$defs"]["Sliding"]["properties"]
    assert set(sliding) == {"kind", "size", "slide"}  # the keys a person writes, not size_ms
    assert sliding["size"]["pattern"] == r"^\d+(ms|s|m|h|d)$"


def test_json_schema_rejects_an_unknown_key() -> None:
    raw = yaml.safe_load((BAD_DEFS / "unknown_key.yaml").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, json_schema())


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [("250ms", 250), ("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000), ("1d", 86_400_000), ("0s", 0)],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms
    assert parse_duration(format_duration(ms)) == ms


@pytest.mark.parametrize("text", ["5", "5 m", "1.5h", "1h30m", "m", "", "5M", 300])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_format_then_parse_is_identity(ms: int) -> None:
    text = format_duration(ms)
    assert parse_duration(text) == ms
    unit = text.lstrip("-0123456789")
    assert unit == "ms" or ms % UNIT_MS[unit] == 0
