"""Durations as people write them (``30s``, ``5m``, ``1h``, ``250ms``) and as code keeps them (integer ms).

A duration field is written without the unit suffix in YAML (``size: 1h``) and kept as ``size_ms``
in the model; it is dumped back in the written form, so a dumped definition loads again unchanged.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_DURATION = re.compile(r"^(-?)(\d+)(ms|s|m|h|d)$")
_HINT = "write an integer and a unit (ms, s, m, h, d), e.g. 250ms, 30s, 5m, 1h"


def parse_duration(text: object) -> int:
    """Milliseconds in a duration string; the sign is kept so the caller can say what bound it breaks.

    >>> parse_duration("5m"), parse_duration("250ms"), parse_duration("0s"), parse_duration("-30s")
    (300000, 250, 0, -30000)
    >>> parse_duration("5 minutes")
    Traceback (most recent call last):
    ...
    ValueError: '5 minutes' is not a duration; write an integer and a unit (ms, s, m, h, d), e.g. 250ms, 30s, 5m, 1h
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration; {_HINT} (as a string)")
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration; {_HINT}")
    sign, amount, unit = match.groups()
    return (-1 if sign else 1) * int(amount) * UNIT_MS[unit]


def format_duration(ms: int) -> str:
    """The shortest exact spelling of ``ms``, the inverse of ``parse_duration``.

    >>> format_duration(3_600_000), format_duration(420_000), format_duration(90_000), format_duration(0)
    ('1h', '7m', '90s', '0s')
    >>> format_duration(-1500)
    '-1500ms'
    """
    if ms == 0:
        return "0s"
    for unit, size in UNIT_MS.items():
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError("unreachable: every integer is a whole number of ms")


def _non_negative(ms: int) -> int:
    if ms < 0:
        raise ValueError(f"{format_duration(ms)} is negative; it must be >= 0s")
    return ms


def _positive(ms: int) -> int:
    if ms <= 0:
        raise ValueError(f"{format_duration(ms)} must be longer than 0s")
    return ms


_SCHEMA = WithJsonSchema(
    {"type": "string", "pattern": r"^\d+(ms|s|m|h|d)$", "examples": ["250ms", "30s", "5m", "1h", "1d"]}
)
_AS_TEXT = PlainSerializer(format_duration, return_type=str)

#: A duration >= 0, kept in ms.
NonNegativeDurationMs = Annotated[
    int, BeforeValidator(parse_duration), AfterValidator(_non_negative), _AS_TEXT, _SCHEMA
]
#: A duration > 0, kept in ms.
PositiveDurationMs = Annotated[
    int, BeforeValidator(parse_duration), AfterValidator(_positive), _AS_TEXT, _SCHEMA
]
