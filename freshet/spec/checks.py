"""Checks across declarations: names unique, references resolve, field kinds fit, bits do not collide.

Every check reads the files' valid declarations (``Part``) and yields ``Problem``s; none stops at the
first, and none changes its input. A file that failed validation keeps its valid items (``kept``
says where they were) and its raw YAML, so its names still count as declared and a typo in one source
does not make every feature of that source an "unknown source" too.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from freshet.events import FieldKind
from freshet.spec.kinds import aggregated_field_problem, attribute_test_problems, field_kinds, unknown_field
from freshet.spec.models import MAX_EXACT_BITS, DefinitionFile, Entity, Source
from freshet.spec.positions import assign_bit_positions
from freshet.spec.predicates import Predicate


@dataclass(frozen=True, order=True)
class Problem:
    """One thing a person must fix: where (file, dotted path) and what."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}" if self.path else f"{self.file}: {self.message}"


@dataclass(frozen=True)
class Part:
    """One file's valid declarations.

    ``kept[section]`` holds the original list indices of ``defs``' items when invalid items were
    dropped; ``raw`` is the file's YAML then, so the names of dropped items still count as declared.
    ``readable`` is false when the file could not be parsed at all.
    """

    label: str
    defs: DefinitionFile = field(default_factory=DefinitionFile)
    raw: Mapping[str, Any] | None = None
    kept: Mapping[str, Sequence[int]] = field(default_factory=dict)
    readable: bool = True


#: The list sections and where they are in a file.
_SECTIONS = {
    "sources": "sources",
    "features": "features",
    "bits": "eligibility.bits",
    "bloom": "eligibility.bloom",
}


def located(part: Part, section: str) -> Iterator[tuple[str, Any]]:
    """``(path, item)`` of one list section, with the indices the items have in the file."""
    items = _items(part.defs, section)
    indices = part.kept.get(section, range(len(items)))
    for index, item in zip(indices, items, strict=True):
        yield f"{_SECTIONS[section]}[{index}]", item


def _items(defs: DefinitionFile, section: str) -> Sequence[Any]:
    if section in ("bits", "bloom"):
        return getattr(defs.eligibility, section) if defs.eligibility else ()
    items: Sequence[Any] = getattr(defs, section)
    return items


def _raw_section(part: Part, section: str) -> Any:
    raw = part.raw or {}
    if section in ("bits", "bloom"):
        eligibility = raw.get("eligibility")
        return eligibility.get(section) if isinstance(eligibility, Mapping) else None
    return raw.get(section)


def declared_names(part: Part, section: str, key: str = "name") -> set[str]:
    """Names declared in a section, counting items that failed validation."""
    names = {getattr(item, key) for _, item in located(part, section)}
    raw_items = _raw_section(part, section)
    if isinstance(raw_items, list):
        names |= {i[key] for i in raw_items if isinstance(i, Mapping) and isinstance(i.get(key), str)}
    return names


def _declares(part: Part, key: str) -> bool:
    return getattr(part.defs, key) is not None or (part.raw is not None and part.raw.get(key) is not None)


@dataclass(frozen=True)
class Context:
    """What every check sees: the parts, what the whole set is called, and the valid sources."""

    parts: Sequence[Part]
    root: str

    @property
    def complete(self) -> bool:
        """Whether every file was readable, so a missing name is really missing."""
        return all(p.readable for p in self.parts)

    @cached_property
    def entity(self) -> Entity | None:
        return next((p.defs.entity for p in self.parts if p.defs.entity), None)

    @cached_property
    def sources(self) -> dict[str, Source]:
        return {s.name: s for p in self.parts for _, s in located(p, "sources")}

    def source_names(self) -> set[str]:
        return {n for p in self.parts for n in declared_names(p, "sources")}


Check = Callable[[Context], Iterator[Problem]]


def check_parts(parts: Sequence[Part], root: str) -> list[Problem]:
    """Every cross-declaration problem of the files ``parts``, in a stable order."""
    context = Context(tuple(parts), root)
    return [problem for check in CHECKS for problem in check(context)]


def _declared_once(key: str, example: str) -> Check:
    def check(ctx: Context) -> Iterator[Problem]:
        declaring = [p for p in ctx.parts if _declares(p, key)]
        if not declaring and ctx.complete:
            yield Problem(ctx.root, key, f"no file declares it; add {key}: {example} to one file")
        for part in declaring[1:]:
            yield Problem(part.label, key, f"declared again (first in {declaring[0].label}); keep one")

    return check


def _eligibility_sources_agree(ctx: Context) -> Iterator[Problem]:
    sections = [(p.label, p.defs.eligibility) for p in ctx.parts if p.defs.eligibility]
    for label, section in sections[1:]:
        first_label, first = sections[0]
        if section.source != first.source:
            message = f"{section.source!r} differs from {first.source!r} in {first_label}; one source feeds eligibility"
            yield Problem(label, "eligibility.source", message)


def _unique(section: str, what: str, key: str = "name") -> Check:
    def check(ctx: Context) -> Iterator[Problem]:
        first: dict[str, tuple[str, str]] = {}
        for part in ctx.parts:
            for path, item in located(part, section):
                name = getattr(item, key)
                if name in first:
                    message = f"{what} {name!r} is already declared at {_where(*first[name], part.label)}; rename one"
                    yield Problem(part.label, f"{path}.{key}", message)
                first.setdefault(name, (part.label, path))

    return check


def _where(label: str, path: str, here: str) -> str:
    """``path`` when it is in the file ``here`` too, else ``file: path``."""
    return path if label == here else f"{label}: {path}"


def _bit_names_differ_from_bloom(ctx: Context) -> Iterator[Problem]:
    bloom = {n for p in ctx.parts for n in declared_names(p, "bloom", key="field")}
    for part in ctx.parts:
        for path, bit in located(part, "bits"):
            if bit.name in bloom:
                message = (
                    f"{bit.name!r} is also a Bloom field; eligibility queries name both alike, rename the bit"
                )
                yield Problem(part.label, f"{path}.name", message)


def _sources_resolve(ctx: Context) -> Iterator[Problem]:
    if not ctx.complete:
        return
    known = ctx.source_names()
    for part in ctx.parts:
        refs = [(f"{path}.source", f.source) for path, f in located(part, "features")]
        refs += [("embedding.source", part.defs.embedding.source)] if part.defs.embedding else []
        refs += [("eligibility.source", part.defs.eligibility.source)] if part.defs.eligibility else []
        for path, name in refs:
            if name not in known:
                yield Problem(part.label, path, f"unknown source {name!r}; {_choices(name, known)}")


def _choices(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"declared: {', '.join(sorted(known))}" if known else "no source is declared"


def _implicit_fields_undeclared(ctx: Context) -> Iterator[Problem]:
    key = ctx.entity.key if ctx.entity else None
    for part in ctx.parts:
        for path, source in located(part, "sources"):
            if key in source.fields:
                message = (
                    f"{key} is the entity key, always there as a non-negative int64; remove it from fields"
                )
                yield Problem(part.label, f"{path}.fields.{key}", message)
            if source.event_time in source.fields:
                message = f"{source.event_time} is the event time, always there; remove it from fields"
                yield Problem(part.label, f"{path}.fields.{source.event_time}", message)


def _feature_fields(ctx: Context) -> Iterator[Problem]:
    for part in ctx.parts:
        for path, feature in located(part, "features"):
            source = ctx.sources.get(feature.source)
            if source is None:
                continue
            kinds = field_kinds(source, ctx.entity)
            if feature.field is not None:
                message = aggregated_field_problem(feature.aggregation, feature.field, kinds, source.name)
                if message:
                    yield Problem(part.label, f"{path}.field", message)
            if feature.filter is not None:
                yield from _predicate_problems(
                    part.label, f"{path}.filter", feature.filter, kinds, source.name
                )


def _predicate_problems(
    label: str, path: str, predicate: Predicate, kinds: Mapping[str, FieldKind], source: str
) -> Iterator[Problem]:
    for test_path, test in predicate.tests(path):
        for key, message in attribute_test_problems(test, kinds, source):
            yield Problem(label, f"{test_path}.{key}", message)


def _embedding_fields(ctx: Context) -> Iterator[Problem]:
    for part in ctx.parts:
        embedding = part.defs.embedding
        source = ctx.sources.get(embedding.source) if embedding else None
        if embedding is None or source is None:
            continue
        kinds = field_kinds(source, ctx.entity)
        for i, name in enumerate(embedding.input_fields):
            if name not in kinds:
                yield Problem(
                    part.label, f"embedding.input_fields[{i}]", unknown_field(name, kinds, source.name)
                )


def _eligibility_fields(ctx: Context) -> Iterator[Problem]:
    for part in ctx.parts:
        section = part.defs.eligibility
        source = ctx.sources.get(section.source) if section else None
        if source is None:
            continue
        kinds = field_kinds(source, ctx.entity)
        for path, bit in located(part, "bits"):
            yield from _predicate_problems(part.label, f"{path}.when", bit.when, kinds, source.name)
        for path, bloom in located(part, "bloom"):
            kind = kinds.get(bloom.field)
            if kind is None:
                yield Problem(part.label, f"{path}.field", unknown_field(bloom.field, kinds, source.name))
            elif kind not in ("string", "strings", "any"):
                message = f"Bloom fields hash strings; {bloom.field!r} is {kind}, use an exact bit"
                yield Problem(part.label, f"{path}.field", message)


def _bits_fit(ctx: Context) -> Iterator[Problem]:
    bits = [(part.label, path, bit) for part in ctx.parts for path, bit in located(part, "bits")]
    pinned: dict[int, tuple[str, str, str]] = {}
    for label, path, bit in bits:
        if bit.bit is None:
            continue
        if bit.bit in pinned:
            name, first_label, first_path = pinned[bit.bit]
            where = _where(first_label, first_path, label)
            message = f"{bit.bit} is already taken by {name!r} ({where}); pick a free bit"
            yield Problem(label, f"{path}.bit", message)
        pinned.setdefault(bit.bit, (bit.name, label, path))
    positions = assign_bit_positions([bit.bit for _, _, bit in bits])
    if positions and max(positions) >= MAX_EXACT_BITS:
        yield Problem(ctx.root, "eligibility.bits", f"{len(bits)} exact bits do not fit in {MAX_EXACT_BITS}")


def _late_topics_are_not_sources(ctx: Context) -> Iterator[Problem]:
    topics = {s.topic: s.name for s in ctx.sources.values()}
    for part in ctx.parts:
        for path, feature in located(part, "features"):
            topic = feature.late.topic
            if topic in topics:
                message = (
                    f"{topic!r} is the topic of source {topics[topic]!r}; late events would loop, use another"
                )
                yield Problem(part.label, f"{path}.late.topic", message)


CHECKS: tuple[Check, ...] = (
    _declared_once("entity", "{name: item, key: item_id}"),
    _declared_once("embedding", "{source, input_fields, dim, dtype, model}"),
    _eligibility_sources_agree,
    _unique("sources", "source"),
    _unique("features", "feature"),
    _unique("bits", "bit"),
    _unique("bloom", "Bloom field", key="field"),
    _bit_names_differ_from_bloom,
    _sources_resolve,
    _implicit_fields_undeclared,
    _feature_fields,
    _embedding_fields,
    _eligibility_fields,
    _bits_fit,
    _late_topics_are_not_sources,
)
