"""Eligibility words of an item from its attributes: exact bits from the declared rules, Bloom bits from values.

This is what the Flink job calls on every attribute-change event, and what builds a query mask on the
replica. Pure: no clocks, no I/O; the same attributes give the same words in every process.

With a ``FeatureSet`` each exact bit is set when its rule (``when``) holds for the attributes. With a
bare ``TensorLayout`` (which keeps no rules) an exact bit is set when the attribute of the bit's name
is ``True``: that is how a query asks for ``{"policy_ok": True, "region": "PT"}``. A Bloom field
takes the attribute of its name, one string or a list of strings, and sets ``bloom_positions`` of
each value; missing attributes and non-string values set nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from freshet.bits import bloom_positions, words_from_positions
from freshet.layout import TensorLayout
from freshet.spec import FeatureSet

Attributes = Mapping[str, object]
Rule = Callable[[Attributes], bool]


@dataclass(frozen=True)
class EligibilityEncoder:
    """Attributes → eligibility words for one layout; build once, call per event."""

    layout: TensorLayout
    #: (bit position, rule) for every exact bit
    rules: tuple[tuple[int, Rule], ...]

    @classmethod
    def of(cls, spec: FeatureSet | TensorLayout) -> EligibilityEncoder:
        """The encoder of a feature set (rules from ``when``) or of a bare layout (flags by bit name)."""
        if isinstance(spec, TensorLayout):
            return cls(spec, tuple((b.position, _flag(b.name)) for b in spec.exact_bits))
        layout = spec.layout()
        rules = spec.eligibility.bits if spec.eligibility else ()
        return cls(layout, tuple((layout.bit(r.name).position, r.when.matches) for r in rules))

    def positions(self, attributes: Attributes) -> list[int]:
        """Absolute bit positions set for ``attributes``, ascending."""
        exact = {position for position, holds in self.rules if holds(attributes)}
        for field in self.layout.bloom_fields:
            for value in _strings(attributes.get(field.name)):
                exact.update(bloom_positions(field, value))
        return sorted(exact)

    def words(self, attributes: Attributes) -> npt.NDArray[np.int64]:
        """The row's ``layout.eligibility_words`` int64 words for ``attributes``."""
        return words_from_positions(self.positions(attributes), self.layout.eligibility_words)


def eligibility_words(spec: FeatureSet | TensorLayout, attributes: Attributes) -> npt.NDArray[np.int64]:
    """Eligibility words for ``attributes``; see the module docstring. Build an ``EligibilityEncoder`` for many.

    >>> from freshet.layout import BloomField, ExactBit
    >>> layout = TensorLayout(embedding_dim=4, exact_bits=(ExactBit("policy_ok", 0), ExactBit("nsfw", 1)))
    >>> eligibility_words(layout, {"policy_ok": True, "nsfw": False}).tolist()
    [1]
    """
    return EligibilityEncoder.of(spec).words(attributes)


def _flag(name: str) -> Rule:
    return lambda attributes: attributes.get(name) is True


def _strings(value: object) -> list[str]:
    """The string values of one attribute: a string is a list of one.

    >>> _strings("PT"), _strings(["PT", "ES", 3]), _strings(None)
    (['PT'], ['PT', 'ES'], [])
    """
    values = value if isinstance(value, list | tuple) else [value]
    return [v for v in values if isinstance(v, str)]
