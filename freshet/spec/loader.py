"""Reading ``feature_defs``: YAML files → checked parts → one ``FeatureSet``, or every problem at once.

A path is one file or a directory of ``*.yaml`` files, read in file-name order (that order is the
declaration order of feature columns and unpinned bits). Each problem reads
``file: dotted.path: message``; a YAML syntax error reads ``file:line:column: invalid YAML: ...``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from freshet.spec.base import SpecError
from freshet.spec.checks import Part, Problem, check_parts
from freshet.spec.featureset import FeatureSet, merge
from freshet.spec.messages import translate
from freshet.spec.models import BloomRule, DefinitionFile, Eligibility, ExactBitRule, Feature, Source
from freshet.spec.yaml_io import YamlProblem, read_yaml


def load_feature_set(path: str | Path) -> FeatureSet:
    """The ``FeatureSet`` declared by a YAML file or a directory of them; raises ``SpecError`` listing every problem."""
    parts, problems = read_parts(Path(path))
    if problems:
        raise SpecError([str(p) for p in problems])
    return merge([p.defs for p in parts])


def feature_set_from_yaml(text: str, name: str = "<yaml>") -> FeatureSet:
    """The ``FeatureSet`` declared by one YAML document (tests, notebooks); raises ``SpecError``."""
    part, problems = parse_part(text, name)
    problems += check_parts([part], name)
    if problems:
        raise SpecError([str(p) for p in problems])
    return merge([part.defs])


def validate_paths(paths: Sequence[str | Path]) -> list[str]:
    """Every problem of each path (a file or a directory, each one feature set); ``[]`` when all are valid."""
    return [str(problem) for path in paths for problem in read_parts(Path(path))[1]]


def json_schema() -> dict[str, Any]:
    """The JSON schema of one ``feature_defs/*.yaml`` file, for editors that complete YAML."""
    schema = DefinitionFile.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "freshet feature definitions",
        "description": "One file of feature_defs/: any of entity, sources, features, embedding, eligibility.",
    }


def read_parts(path: Path) -> tuple[list[Part], list[Problem]]:
    """The parts of ``path`` and every problem: each file's own, then those across files."""
    files, problems = _files(path)
    parts = []
    for file in files:
        part, file_problems = _read_part(file)
        parts.append(part)
        problems += file_problems
    if parts:
        problems += check_parts(parts, str(path))
    return parts, problems


def _files(path: Path) -> tuple[list[Path], list[Problem]]:
    if path.is_dir():
        files = sorted(path.glob("*.yaml"))
        problems = [
            Problem(str(p), "", "ignored: only *.yaml files are read; rename it") for p in path.glob("*.yml")
        ]
        if not files:
            problems.append(Problem(str(path), "", "no *.yaml files here; point at feature_defs/ or a file"))
        return files, sorted(problems)
    if path.is_file():
        return [path], []
    return [], [Problem(str(path), "", "no such file or directory")]


def _read_part(file: Path) -> tuple[Part, list[Problem]]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Part(str(file), readable=False), [Problem(str(file), "", f"cannot read: {exc}")]
    return parse_part(text, str(file))


def parse_part(text: str, label: str) -> tuple[Part, list[Problem]]:
    """One file's valid declarations and its own problems (YAML syntax and per-declaration checks)."""
    try:
        raw = read_yaml(text)
    except YamlProblem as exc:
        return Part(label, readable=False), [Problem(f"{label}:{exc.line}:{exc.column}", "", str(exc))]
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        message = f"expected a mapping of sections (entity, sources, features, embedding, eligibility), got {raw!r:.40}"
        return Part(label, readable=False), [Problem(label, "", message)]
    try:
        return Part(label, DefinitionFile.model_validate(raw)), []
    except ValidationError as exc:
        problems = [Problem(label, *translate(e, DefinitionFile)) for e in exc.errors()]
        return _salvage(label, raw), problems


def _salvage(label: str, raw: Mapping[str, Any]) -> Part:
    """The valid declarations of a file with errors, so the checks across files still see them."""
    kept: dict[str, list[int]] = {}
    sections: dict[str, Any] = {}
    for section, model in (("sources", Source), ("features", Feature)):
        kept[section], sections[section] = _valid_items(raw.get(section), model)
    for key in ("entity", "embedding"):
        sections[key] = _valid(DefinitionFile.model_fields[key].annotation, raw.get(key))
    eligibility = raw.get("eligibility")
    if isinstance(eligibility, Mapping):
        kept["bits"], bits = _valid_items(eligibility.get("bits"), ExactBitRule)
        kept["bloom"], bloom = _valid_items(eligibility.get("bloom"), BloomRule)
        sections["eligibility"] = _valid(
            Eligibility, {"source": eligibility.get("source"), "bits": bits, "bloom": bloom}
        )
    defs = DefinitionFile.model_validate(sections)
    return Part(label, defs, raw=raw, kept=kept)


def _valid_items(items: object, model: type[BaseModel]) -> tuple[list[int], list[Any]]:
    indexed = [(i, _valid(model, item)) for i, item in enumerate(items if isinstance(items, list) else [])]
    kept = [(i, item) for i, item in indexed if item is not None]
    return [i for i, _ in kept], [item for _, item in kept]


def _valid(annotation: Any, value: object) -> Any:
    try:
        return TypeAdapter(annotation).validate_python(value)
    except ValidationError:
        return None
