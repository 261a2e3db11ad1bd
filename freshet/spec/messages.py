"""Pydantic's validation errors, said the way a person editing YAML needs them: ``path: what to do``.

Paths are dotted with list indices (``features[3].window.slide``) and use the keys as written in
YAML. Pydantic puts the tag of a discriminated union into the location (``window.sliding.slide``);
those are dropped. Each message names the value found and, where it helps, what would be accepted.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from freshet.spec.base import FIELD_NAME_PATTERN, NAME_PATTERN, TOPIC_PATTERN, FieldProblem
from freshet.spec.predicates import PREDICATE_HELP

Loc = Sequence[str | int]

_WINDOW_KINDS = {"tumbling", "sliding"}

_PATTERNS = {
    NAME_PATTERN: "is not a name: use lower-case letters, digits and _, starting with a letter",
    FIELD_NAME_PATTERN: "is not a field name: use letters, digits and _",
    TOPIC_PATTERN: "is not a Kafka topic name: use letters, digits, '.', '_' and '-'",
}

_EXPECTED = {
    "int": "an integer",
    "string": "a string",
    "bool": "true or false",
    "float": "a number",
    "finite_number": "a finite number",
    "tuple": "a list",
    "list": "a list",
    "dict": "a mapping",
    "model": "a mapping",
    "model_attributes": "a mapping",
}


def format_loc(loc: Loc) -> str:
    """A dotted path with ``[i]`` for list indices.

    >>> format_loc(("features", 3, "window", "slide"))
    'features[3].window.slide'
    >>> format_loc(())
    ''
    """
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _is_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part.startswith("~") or part in _WINDOW_KINDS)


def translate(error: ErrorDetails, root: type[BaseModel]) -> tuple[str, str]:
    """``(path, message)`` for one pydantic error found validating ``root``."""
    raw_loc = list(error["loc"])
    kind, ctx = error["type"], error.get("ctx", {})
    # an unknown key is the user's own word, even if it looks like a tag
    tagged, last = (raw_loc[:-1], raw_loc[-1:]) if kind == "extra_forbidden" else (raw_loc, [])
    loc: list[str | int] = [p for p in tagged if not _is_tag(p)] + last
    cause = ctx.get("error")
    if isinstance(cause, FieldProblem):
        return format_loc([*loc, cause.key]), str(cause)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = str(ctx.get("discriminator", "")).strip("'")
        return format_loc([*loc, discriminator]), _message(error, root, raw_loc)
    return format_loc(loc), _message(error, root, raw_loc)


def _message(error: ErrorDetails, root: type[BaseModel], raw_loc: Loc) -> str:
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(str(raw_loc[-1]), keys_at(root, raw_loc[:-1]))
    if kind in ("missing", "union_tag_not_found"):
        return "required, but missing"
    if kind == "union_tag_invalid":
        return f"{ctx['tag']!r} is not one of {ctx['expected_tags']}"
    if kind == "predicate":
        return PREDICATE_HELP
    if kind in ("literal_error", "enum"):
        return f"{_show(value)} is not allowed; use {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        return f"{_show(value)} {_PATTERNS.get(ctx['pattern'], 'does not match ' + ctx['pattern'])}"
    return _bounds_message(kind, ctx, value) or _type_message(kind, value) or _generic(error)


def _bounds_message(kind: str, ctx: dict[str, Any], value: object) -> str:
    bounds = {
        "greater_than_equal": ("ge", ">="),
        "greater_than": ("gt", ">"),
        "less_than_equal": ("le", "<="),
        "less_than": ("lt", "<"),
        "multiple_of": ("multiple_of", "a multiple of"),
    }
    if kind in bounds:
        key, relation = bounds[kind]
        return f"must be {relation} {ctx[key]}, got {_show(value)}"
    if kind == "too_short":
        return f"needs at least {ctx['min_length']} item(s)"
    return ""


def _type_message(kind: str, value: object) -> str:
    base = kind.removesuffix("_type").removesuffix("_parsing").removesuffix("_from_float")
    if base not in _EXPECTED:
        return ""
    message = f"expected {_EXPECTED[base]}, got {_show(value)}"
    if base == "string" and isinstance(value, bool):
        message += " (YAML reads yes/no/on/off/true/false as booleans: quote it)"
    return message


def _generic(error: ErrorDetails) -> str:
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message[:1].lower() + message[1:]


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    if allowed:
        return f"unknown key {key!r}; expected one of: {', '.join(allowed)}"
    return f"unknown key {key!r}"


def keys_at(root: type[BaseModel], loc: Loc) -> list[str]:
    """The keys (as written in YAML) of the model found at ``loc`` under ``root``; ``[]`` if none.

    >>> from freshet.spec.models import DefinitionFile
    >>> keys_at(DefinitionFile, ("features", 0, "window", "sliding"))
    ['kind', 'size', 'slide']
    """
    annotation: Any = root
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    model = _strip(annotation)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _strip(annotation: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and ``X | None``."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif _is_union(annotation) and type(None) in typing.get_args(annotation):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = members[0] if len(members) == 1 else typing.Union[tuple(members)]  # noqa: UP007
        else:
            return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _step(annotation: Any, part: str | int) -> Any:
    annotation = _strip(annotation)
    if _is_union(annotation):
        return next((m for m in typing.get_args(annotation) if _tag_of(m) == part), None)
    origin = typing.get_origin(annotation)
    if isinstance(part, int):
        return typing.get_args(annotation)[0] if origin in (tuple, list) else None
    if origin is dict:
        return typing.get_args(annotation)[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = {info.alias or name: info for name, info in annotation.model_fields.items()}
        return fields[part].annotation if part in fields else None
    return None


def _tag_of(member: Any) -> str | None:
    """The tag pydantic uses for a union member: its ``Tag`` or its ``kind`` literal."""
    for meta in getattr(member, "__metadata__", ()):
        if hasattr(meta, "tag"):
            return str(meta.tag)
    model = _strip(member)
    kind = getattr(model, "model_fields", {}).get("kind")
    return str(typing.get_args(kind.annotation)[0]) if kind is not None else None
