"""Where eligibility bits go: exact bits first, then word-aligned Bloom blocks.

Exact bits keep a pinned ``bit: N``; the others take the lowest free positions in declaration order
(files by name, then position in the file). Pin bits in long-lived layouts: removing an unpinned bit
moves the ones after it, which changes the layout and its hash (as it must). Bloom blocks start at the
first whole word after the last exact bit and are whole words long, so adding an exact bit within the
used words moves no Bloom block, and a query mask is built word by word.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from freshet.layout import BITS_PER_WORD


def assign_bit_positions(pinned: Sequence[int | None]) -> list[int]:
    """Positions for exact bits: pinned ones kept, the rest the lowest free positions in order.

    Pinned duplicates are kept as they are; ``freshet.spec.checks`` reports them.

    >>> assign_bit_positions([None, 0, None, 5, None])
    [1, 0, 2, 5, 3]
    >>> assign_bit_positions([])
    []
    """
    taken = {p for p in pinned if p is not None}
    free = (p for p in itertools.count() if p not in taken)
    return [p if p is not None else next(free) for p in pinned]


def bloom_start(exact_positions: Sequence[int]) -> int:
    """The first bit of the first whole word after the exact bits.

    >>> bloom_start([]), bloom_start([0, 5]), bloom_start([63]), bloom_start([64])
    (0, 64, 64, 128)
    """
    used_words = -(-(max(exact_positions, default=-1) + 1) // BITS_PER_WORD)
    return used_words * BITS_PER_WORD


def bloom_offsets(start: int, widths_bits: Sequence[int]) -> list[int]:
    """Offsets of consecutive Bloom blocks from ``start``, each rounded up to a whole word.

    >>> bloom_offsets(64, [128, 64, 100])
    [64, 192, 256]
    """
    offsets, at = [], start
    for width in widths_bits:
        offsets.append(at)
        at += -(-width // BITS_PER_WORD) * BITS_PER_WORD
    return offsets
