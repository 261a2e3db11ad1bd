"""Whether a field of a declared kind can be aggregated, tested or hashed as a declaration asks.

Kinds are ``freshet.events.FieldKind``: what the event parser checks before any of this runs.
Messages name the field and say what would work instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from freshet.events import FieldKind
from freshet.spec.models import Entity, Source
from freshet.spec.predicates import AttributeTest, Contains, In, Range


def field_kinds(source: Source, entity: Entity | None) -> dict[str, FieldKind]:
    """Every field a source's events carry: the declared ones, the key (int) and the event time."""
    implicit: dict[str, FieldKind] = {source.event_time: "any"}
    if entity is not None:
        implicit[entity.key] = "int"
    return {**source.fields, **implicit}


_NUMERIC: set[FieldKind] = {"int", "number", "any"}
_NEEDS: dict[str, tuple[set[FieldKind], str]] = {
    "approx_distinct": ({"int", "number", "string", "any"}, "an int, number or string"),
}


def aggregated_field_problem(aggregation: str, name: str, kinds: Mapping[str, FieldKind], source: str) -> str:
    """Why ``aggregation`` cannot aggregate field ``name``, or ``""`` when it can.

    >>> aggregated_field_problem("sum", "action", {"action": "string"}, "engagement")
    "sum needs a number field; 'action' is string"
    >>> aggregated_field_problem("approx_distinct", "user_id", {"user_id": "int"}, "engagement")
    ''
    """
    if name not in kinds:
        return unknown_field(name, kinds, source)
    allowed, described = _NEEDS.get(aggregation, (_NUMERIC, "a number"))
    if kinds[name] not in allowed:
        return f"{aggregation} needs {described} field; {name!r} is {kinds[name]}"
    return ""


def unknown_field(name: str, kinds: Mapping[str, FieldKind], source: str) -> str:
    """The message for a field that ``source`` does not carry."""
    return (
        f"{name!r} is not a field of source {source!r}; declare it in its fields or use one of: "
        + ", ".join(sorted(kinds))
    )


_HINT: dict[FieldKind, str] = {
    "int": "write an integer",
    "number": "write a number",
    "string": "quote it",
    "bool": "write true or false",
}


def _fits(kind: FieldKind, value: object) -> bool:
    """Whether a scalar written in YAML can ever equal a field of ``kind``.

    >>> _fits("int", 3), _fits("int", True), _fits("number", 3), _fits("bool", "yes"), _fits("any", [])
    (True, False, True, False, True)
    """
    if kind == "any":
        return True
    if isinstance(value, bool) or kind == "bool":
        return kind == "bool" and isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int)
    if kind == "number":
        return isinstance(value, int | float)
    return isinstance(value, str)


def attribute_test_problems(
    test: AttributeTest, kinds: Mapping[str, FieldKind], source: str
) -> Iterator[tuple[str, str]]:
    """``(key, message)`` for each way one predicate test cannot work on the declared field kinds."""
    kind = kinds.get(test.field)
    if kind is None:
        yield "field", unknown_field(test.field, kinds, source)
    elif isinstance(test, Range):
        if kind not in _NUMERIC:
            yield "range", f"range needs a number field; {test.field!r} is {kind}"
    elif isinstance(test, Contains):
        if kind not in ("strings", "any"):
            yield "contains", f"contains needs a strings field; {test.field!r} is {kind}, use eq or in"
        elif not isinstance(test.contains, str):
            yield "contains", f"{test.contains!r} can never be among the strings of {test.field!r}; quote it"
    elif kind == "strings":
        yield ("in" if isinstance(test, In) else "eq"), f"{test.field!r} holds strings; use contains"
    else:
        values = (
            [("eq", test.eq)]
            if not isinstance(test, In)
            else [(f"in[{i}]", v) for i, v in enumerate(test.in_)]
        )
        for key, value in values:
            if not _fits(kind, value):
                yield key, f"{value!r} can never match {kind} field {test.field!r}; {_HINT.get(kind, '')}"
