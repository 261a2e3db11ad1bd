"""Structured predicates on event fields: feature filters and eligibility bit rules. Never ``eval``.

One test per mapping, combined with ``all``/``any``/``not``::

    {field: action, eq: like}
    {field: media_type, in: [video, short_video]}
    {field: regions, contains: PT}
    {field: duration_s, range: {min: 60, max: 600}}      # inclusive bounds; either may be left out
    {all: [{field: policy_status, eq: approved}, {not: {field: nsfw, eq: true}}]}

Semantics, for the Flink job and for anyone reading a rule:

* a missing (or null) field makes every test on it false, so ``not`` of such a test is true;
* ``eq``/``in`` compare a scalar field; ``true`` never equals ``1`` (YAML and JSON types are kept);
* ``contains`` asks whether the field's values include the value; a single string counts as a
  list of one (the ``strings`` field kind accepts both);
* ``range`` holds for numbers (not booleans) with ``min <= value <= max``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Annotated, Union

from pydantic import Discriminator, Field, PlainValidator, Tag, WithJsonSchema, model_validator

from freshet.spec.base import FieldName, FieldProblem, Frozen


def check_scalar(value: object) -> str | int | float | bool:
    """Accept a string, integer, finite number or boolean; anything else is a person's mistake.

    >>> check_scalar("like"), check_scalar(3), check_scalar(True)
    ('like', 3, True)
    >>> check_scalar([1])
    Traceback (most recent call last):
    ...
    ValueError: expected a string, number or true/false, got [1]
    """
    if isinstance(value, str | bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise ValueError(f"expected a string, number or true/false, got {value!r}")


Scalar = Annotated[
    str | int | float | bool,
    PlainValidator(check_scalar),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def same_value(a: object, b: object) -> bool:
    """Equality that keeps JSON types apart: booleans equal only booleans; 1 equals 1.0.

    >>> same_value(True, 1), same_value(1, 1.0), same_value("1", 1), same_value(False, False)
    (False, True, False, True)
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return a == b


def _values(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Eq(Frozen):
    """``{field: F, eq: V}``: the field equals V."""

    field: FieldName
    eq: Scalar

    def matches(self, record: Mapping[str, object]) -> bool:
        """Whether ``record`` satisfies this test."""
        return same_value(record.get(self.field), self.eq)

    def tests(self, path: str) -> Iterator[tuple[str, AttributeTest]]:
        """Every single-field test in this predicate, with its dotted path under ``path``."""
        yield path, self


class In(Frozen):
    """``{field: F, in: [V, ...]}``: the field is one of the values."""

    field: FieldName
    in_: tuple[Scalar, ...] = Field(alias="in", min_length=1)

    def matches(self, record: Mapping[str, object]) -> bool:
        """Whether ``record`` satisfies this test."""
        value = record.get(self.field)
        return any(same_value(value, v) for v in self.in_)

    def tests(self, path: str) -> Iterator[tuple[str, AttributeTest]]:
        """Every single-field test in this predicate, with its dotted path under ``path``."""
        yield path, self


class Contains(Frozen):
    """``{field: F, contains: V}``: the field's values (a list, or one string) include V."""

    field: FieldName
    contains: Scalar

    def matches(self, record: Mapping[str, object]) -> bool:
        """Whether ``record`` satisfies this test."""
        value = record.get(self.field)
        return value is not None and any(same_value(v, self.contains) for v in _values(value))

    def tests(self, path: str) -> Iterator[tuple[str, AttributeTest]]:
        """Every single-field test in this predicate, with its dotted path under ``path``."""
        yield path, self


class Bounds(Frozen):
    """Inclusive numeric bounds; at least one is given."""

    min: Number | None = None
    max: Number | None = None

    @model_validator(mode="after")
    def _check(self) -> Bounds:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise FieldProblem("max", f"{self.max:g} is below min {self.min:g}")
        return self


class Range(Frozen):
    """``{field: F, range: {min: A, max: B}}``: a number with ``A <= value <= B``."""

    field: FieldName
    range: Bounds

    def matches(self, record: Mapping[str, object]) -> bool:
        """Whether ``record`` satisfies this test."""
        value = record.get(self.field)
        if not _is_number(value):
            return False
        number = float(value)  # type: ignore[arg-type]  # _is_number proved it
        low, high = self.range.min, self.range.max
        return (low is None or number >= low) and (high is None or number <= high)

    def tests(self, path: str) -> Iterator[tuple[str, AttributeTest]]:
        """Every single-field test in this predicate, with its dotted path under ``path``."""
        yield path, self


class AllOf(Frozen):
    """``{all: [P, ...]}``: every predicate holds."""

    all: tuple[Predicate, ...] = Field(min_length=1)

    def matches(self, record: Mapping[str, object]) -> bool:
        """Whether ``record`` satisfies every predicate."""
        return all(p.matches(record) for p in self.all)

    def tests(self, path: str) -> Iterator[tuple[str, AttributeTest]]:
        """Every single-field test in this predicate, with its dotted path under ``path``."""
        for i, p in enumerate(self.all):
            yield from p.tests(f"{path}.all[{i}]")


class AnyOf(Frozen):
    """``{any: [P, ...]}``: at least one predicate holds."""

    any: tuple[Predicate, ...] = Field(min_length=1)

    def matches(self, record: Mapping[str, object]) -> bool:
        """Whether ``record`` satisfies some predicate."""
        return any(p.matches(record) for p in self.any)

    def tests(self, path: str) -> Iterator[tuple[str, AttributeTest]]:
        """Every single-field test in this predicate, with its dotted path under ``path``."""
        for i, p in enumerate(self.any):
            yield from p.tests(f"{path}.any[{i}]")


class Not(Frozen):
    """``{not: P}``: the predicate does not hold."""

    not_: Predicate = Field(alias="not")

    def matches(self, record: Mapping[str, object]) -> bool:
        """Whether ``record`` fails the inner predicate."""
        return not self.not_.matches(record)

    def tests(self, path: str) -> Iterator[tuple[str, AttributeTest]]:
        """Every single-field test in this predicate, with its dotted path under ``path``."""
        yield from self.not_.tests(f"{path}.not")


AttributeTest = Eq | In | Contains | Range

#: Union tags put into error locations by pydantic; never keys a person writes (see ``messages``).
_TYPES: dict[str, type[Frozen]] = {
    "eq": Eq,
    "in": In,
    "contains": Contains,
    "range": Range,
    "all": AllOf,
    "any": AnyOf,
    "not": Not,
}
_TAGS = {key: f"~{key}" for key in _TYPES}
_TAG_OF_TYPE: dict[type, str] = {model: f"~{key}" for key, model in _TYPES.items()}


def _predicate_tag(value: object) -> str | None:
    """The union member a predicate mapping is meant to be: the one operator key it holds."""
    if isinstance(value, Mapping):
        ops = [tag for key, tag in _TAGS.items() if key in value]
        return ops[0] if len(ops) == 1 else None
    return _TAG_OF_TYPE.get(type(value))


PREDICATE_HELP = (
    "expected exactly one test: {field: F, eq|in|contains|range: ...}, {all: [...]}, {any: [...]} "
    "or {not: ...}; combine several tests with all: [...]"
)

Predicate = Annotated[
    Union[  # noqa: UP007  # Tag needs the Annotated members of a typing.Union
        Annotated[Eq, Tag("~eq")],
        Annotated[In, Tag("~in")],
        Annotated[Contains, Tag("~contains")],
        Annotated[Range, Tag("~range")],
        Annotated[AllOf, Tag("~all")],
        Annotated[AnyOf, Tag("~any")],
        Annotated[Not, Tag("~not")],
    ],
    Discriminator(_predicate_tag, custom_error_type="predicate", custom_error_message=PREDICATE_HELP),
]

for _model in (AllOf, AnyOf, Not):
    _model.model_rebuild()
