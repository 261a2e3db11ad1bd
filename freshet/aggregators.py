"""Mergeable aggregators for windowed features: ``initial / add / merge / result``.

Accumulators are plain, immutable, picklable values (ints, floats, tuples, ``bytes``,
``frozenset``): they live in Flink keyed state and in backfill's memory alike. ``add`` and
``merge`` never change their arguments; they return the new accumulator.

Every result is a function of the *multiset* of ``(value, ts_ms)`` added, never of the order
they were added or merged in, so a window's value does not depend on arrival order or on how
the work was split:

* ``sum`` and ``mean`` keep the exact sum as Shewchuk partials (the state of ``math.fsum``) and
  round once in ``result``; the result equals ``math.fsum(values)`` bit for bit. A vectorized
  path (backfill) must use ``math.fsum`` too, not ``numpy.sum``, whose rounding depends on order.
* ``last`` is the value of the event with the greatest event time; among equal times the
  greatest value wins.
* ``approx_distinct`` counts exactly up to ``EXACT_DISTINCT_LIMIT`` distinct values, then becomes
  a HyperLogLog sketch with ``2**HLL_PRECISION`` = 1024 registers: relative standard error
  1.04 / sqrt(1024) ≈ 3.3% (small-range linear counting is usually better). Values are hashed
  with blake2b (stable across processes and platforms); ``3``, ``3.0`` and ``-0.0 == 0`` count
  as the same value as their integer, a string never equals a number.

Values must be finite (the event parser rejects others), and ``-0.0`` is read as ``0.0`` so
``min``/``max`` cannot depend on which zero came first. Aggregates are not idempotent: a raw
event delivered twice is counted twice (deduplication belongs upstream, by event id).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Literal, Protocol, TypeVar, get_args

Value = float | int | str
Aggregation = Literal["count", "sum", "mean", "min", "max", "last", "approx_distinct"]

A = TypeVar("A")

Partials = tuple[float, ...]
"""An exact sum as non-overlapping floats of increasing magnitude (Shewchuk)."""


class Aggregator(Protocol[A]):
    """What every aggregator offers; ``A`` is its accumulator type."""

    @property
    def name(self) -> str: ...

    def initial(self) -> A: ...

    def add(self, acc: A, value: Value, ts_ms: int) -> A: ...

    def merge(self, a: A, b: A) -> A: ...

    def result(self, acc: A) -> float: ...


def _number(value: Value) -> float:
    """``value`` as a float with ``-0.0`` read as ``0.0``."""
    if isinstance(value, str):
        raise TypeError(f"a numeric aggregation needs a number, got the string {value!r}")
    return float(value) + 0.0


def grow_partials(partials: Partials, x: float) -> Partials:
    """Add ``x`` to an exact sum kept as partials (the inner loop of ``math.fsum``).

    >>> p = grow_partials(grow_partials(grow_partials((), 1e16), 1.0), -1e16)
    >>> math.fsum(p)
    1.0
    """
    out: list[float] = []
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            out.append(lo)
        x = hi
    out.append(x)
    return tuple(out)


def _merge_partials(a: Partials, b: Partials) -> Partials:
    for x in b:
        a = grow_partials(a, x)
    return a


def _exact_sum(partials: Partials) -> float:
    return math.fsum(partials) + 0.0


class Count:
    """Number of events."""

    name = "count"

    def initial(self) -> int:
        return 0

    def add(self, acc: int, value: Value, ts_ms: int) -> int:
        return acc + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, acc: int) -> float:
        return float(acc)


class Sum:
    """Correctly rounded sum of the values (equals ``math.fsum``)."""

    name = "sum"

    def initial(self) -> Partials:
        return ()

    def add(self, acc: Partials, value: Value, ts_ms: int) -> Partials:
        return grow_partials(acc, _number(value))

    def merge(self, a: Partials, b: Partials) -> Partials:
        return _merge_partials(a, b)

    def result(self, acc: Partials) -> float:
        return _exact_sum(acc)


class Mean:
    """``math.fsum(values) / len(values)``; NaN when empty."""

    name = "mean"

    def initial(self) -> tuple[Partials, int]:
        return ((), 0)

    def add(self, acc: tuple[Partials, int], value: Value, ts_ms: int) -> tuple[Partials, int]:
        return (grow_partials(acc[0], _number(value)), acc[1] + 1)

    def merge(self, a: tuple[Partials, int], b: tuple[Partials, int]) -> tuple[Partials, int]:
        return (_merge_partials(a[0], b[0]), a[1] + b[1])

    def result(self, acc: tuple[Partials, int]) -> float:
        return _exact_sum(acc[0]) / acc[1] if acc[1] else math.nan


class Min:
    """Smallest value; NaN when empty."""

    name = "min"

    def initial(self) -> float | None:
        return None

    def add(self, acc: float | None, value: Value, ts_ms: int) -> float | None:
        return self.merge(acc, _number(value))

    def merge(self, a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else min(a, b)

    def result(self, acc: float | None) -> float:
        return math.nan if acc is None else acc


class Max:
    """Greatest value; NaN when empty."""

    name = "max"

    def initial(self) -> float | None:
        return None

    def add(self, acc: float | None, value: Value, ts_ms: int) -> float | None:
        return self.merge(acc, _number(value))

    def merge(self, a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else max(a, b)

    def result(self, acc: float | None) -> float:
        return math.nan if acc is None else acc


class Last:
    """Value of the event with the greatest event time (ties: the greatest value); NaN when empty."""

    name = "last"

    def initial(self) -> tuple[int, float] | None:
        return None

    def add(self, acc: tuple[int, float] | None, value: Value, ts_ms: int) -> tuple[int, float] | None:
        return self.merge(acc, (ts_ms, _number(value)))

    def merge(self, a: tuple[int, float] | None, b: tuple[int, float] | None) -> tuple[int, float] | None:
        return b if a is None else a if b is None else max(a, b)

    def result(self, acc: tuple[int, float] | None) -> float:
        return math.nan if acc is None else acc[1]


#: Up to this many distinct values ``approx_distinct`` is exact (a set of 64-bit hashes).
EXACT_DISTINCT_LIMIT = 128
#: HyperLogLog precision: 2**p registers of one byte each.
HLL_PRECISION = 10
_HLL_REGISTERS = 1 << HLL_PRECISION
_HLL_REST_BITS = 64 - HLL_PRECISION
_HLL_ALPHA = 0.7213 / (1 + 1.079 / _HLL_REGISTERS)

DistinctAcc = frozenset[int] | bytes
"""Exact phase: the set of value hashes; sketch phase: the HyperLogLog registers."""


def stable_hash64(value: Value) -> int:
    """A 64-bit hash of ``value`` that is the same in every process and on every platform.

    >>> stable_hash64(3) == stable_hash64(3.0) == stable_hash64(True + 2)
    True
    >>> stable_hash64("3") == stable_hash64(3)
    False
    """
    if isinstance(value, str):
        data = b"s" + value.encode()
    elif isinstance(value, int) or value.is_integer():
        data = b"i" + str(int(value)).encode()
    else:
        data = b"f" + repr(value).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _sketch(hashes: frozenset[int]) -> bytes:
    registers = bytearray(_HLL_REGISTERS)
    for h in hashes:
        index, rank = _hll_slot(h)
        registers[index] = max(registers[index], rank)
    return bytes(registers)


def _hll_slot(h: int) -> tuple[int, int]:
    """Register index (top bits) and rank (1 + leading zeros of the rest) of hash ``h``."""
    rest = h & ((1 << _HLL_REST_BITS) - 1)
    return h >> _HLL_REST_BITS, _HLL_REST_BITS - rest.bit_length() + 1


def _hll_estimate(registers: bytes) -> float:
    raw = _HLL_ALPHA * _HLL_REGISTERS**2 / math.fsum(2.0**-r for r in registers)
    zeros = registers.count(0)
    if raw <= 2.5 * _HLL_REGISTERS and zeros:
        return _HLL_REGISTERS * math.log(_HLL_REGISTERS / zeros)
    return raw


class ApproxDistinct:
    """Distinct values: exact up to ``EXACT_DISTINCT_LIMIT``, then HyperLogLog (p = 10)."""

    name = "approx_distinct"

    def initial(self) -> DistinctAcc:
        return frozenset()

    def add(self, acc: DistinctAcc, value: Value, ts_ms: int) -> DistinctAcc:
        h = stable_hash64(value)
        if isinstance(acc, frozenset):
            return self._settle(acc | {h}) if h not in acc else acc
        index, rank = _hll_slot(h)
        if rank <= acc[index]:
            return acc
        return acc[:index] + bytes([rank]) + acc[index + 1 :]

    def merge(self, a: DistinctAcc, b: DistinctAcc) -> DistinctAcc:
        if isinstance(a, frozenset) and isinstance(b, frozenset):
            return self._settle(a | b)
        ra = _sketch(a) if isinstance(a, frozenset) else a
        rb = _sketch(b) if isinstance(b, frozenset) else b
        return bytes(map(max, ra, rb))

    def result(self, acc: DistinctAcc) -> float:
        return float(len(acc)) if isinstance(acc, frozenset) else _hll_estimate(acc)

    @staticmethod
    def _settle(hashes: frozenset[int]) -> DistinctAcc:
        return hashes if len(hashes) <= EXACT_DISTINCT_LIMIT else _sketch(hashes)


AGGREGATORS: Mapping[str, Aggregator[Any]] = {
    agg.name: agg for agg in (Count(), Sum(), Mean(), Min(), Max(), Last(), ApproxDistinct())
}
assert set(AGGREGATORS) == set(get_args(Aggregation))


def aggregator(name: str) -> Aggregator[Any]:
    """The aggregator called ``name``.

    >>> agg = aggregator("mean"); agg.result(agg.add(agg.add(agg.initial(), 1, 0), 2, 0))
    1.5
    """
    try:
        return AGGREGATORS[name]
    except KeyError:
        raise ValueError(f"unknown aggregation {name!r}; expected one of {sorted(AGGREGATORS)}") from None
