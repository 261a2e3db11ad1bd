"""Safe YAML reading that refuses what PyYAML silently accepts: a key written twice in one mapping."""

from __future__ import annotations

from typing import Any

import yaml


class YamlProblem(Exception):
    """Invalid YAML, with the 1-based line and column where it was found."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` whose mappings reject duplicate keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:  # unhashable: construct_mapping reports it
            continue
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {first + 1}); keep one",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _explain(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's problem, with where the construct it was reading began (often the real mistake)."""
    if exc.context and exc.context_mark and exc.problem:
        return f"{exc.problem} ({exc.context} at line {exc.context_mark.line + 1})"
    return str(exc.problem or exc.context)


def read_yaml(text: str) -> Any:
    """The one YAML document in ``text``; raises ``YamlProblem`` on a syntax error or a duplicate key.

    >>> read_yaml("a: 1\\nb: [x, y]")
    {'a': 1, 'b': ['x', 'y']}
    >>> read_yaml("a: 1\\na: 2")
    Traceback (most recent call last):
    ...
    freshet.spec.yaml_io.YamlProblem: invalid YAML: duplicate key 'a' (first on line 1); keep one
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise YamlProblem(f"invalid YAML: {_explain(exc)}", line, column) from exc
    except yaml.YAMLError as exc:
        raise YamlProblem(f"invalid YAML: {exc}", 0, 0) from exc
