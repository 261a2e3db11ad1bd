"""Checking a retrieval request against the layout; every problem is reported at once.

Pydantic checks the shape of the JSON (types, ``k`` bounds); what depends on the deployment's layout
(the embedding's dim, bit and Bloom field names) is checked here, before the model is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from freshet.layout import TensorLayout


def request_problems(
    layout: TensorLayout,
    embedding: Sequence[float] | None,
    required_bits: Sequence[str],
    excluded_bits: Sequence[str],
    bloom: Mapping[str, Sequence[str]],
    user: Mapping[str, object] | None = None,
) -> list[str]:
    """Messages for everything wrong with a request, in field order; empty when it is fine.

    >>> from freshet.layout import ExactBit
    >>> layout = TensorLayout(embedding_dim=2, exact_bits=(ExactBit("safe", 0),))
    >>> request_problems(layout, [0.1], ["safe", "nsfw"], [], {"region": ["PT"]})  # doctest: +NORMALIZE_WHITESPACE
    ['embedding: 1 values, the layout has embedding_dim 2',
     "required_bits: unknown bit 'nsfw' (known: safe)",
     "bloom: unknown field 'region' (known: none)"]
    >>> request_problems(layout, None, [], [], {})
    ['give exactly one of embedding (a query vector) and user (features for the query tower)']
    """
    problems = []
    if (embedding is None) == (user is None):
        problems.append(
            "give exactly one of embedding (a query vector) and user (features for the query tower)"
        )
    elif embedding is None:
        pass
    elif len(embedding) != layout.embedding_dim:
        problems.append(
            f"embedding: {len(embedding)} values, the layout has embedding_dim {layout.embedding_dim}"
        )
    elif not all(math.isfinite(x) for x in embedding):
        problems.append("embedding: holds NaN or Inf")
    known_bits = {b.name for b in layout.exact_bits}
    for where, names in (("required_bits", required_bits), ("excluded_bits", excluded_bits)):
        problems += [
            f"{where}: unknown bit {n!r} (known: {_names(known_bits)})" for n in names if n not in known_bits
        ]
    if both := sorted(set(required_bits) & set(excluded_bits)):
        problems.append(f"excluded_bits: {', '.join(both)} also required; no item can match")
    known_fields = {f.name for f in layout.bloom_fields}
    for name, values in bloom.items():
        if name not in known_fields:
            problems.append(f"bloom: unknown field {name!r} (known: {_names(known_fields)})")
        elif not values:
            problems.append(f"bloom.{name}: give at least one value (an empty list matches no item)")
    return problems


def _names(names: set[str]) -> str:
    return ", ".join(sorted(names)) or "none"
