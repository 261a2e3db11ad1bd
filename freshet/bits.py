"""Eligibility bit maths shared by the Flink side (deriving words) and the replica (filtering).

Bits live in int64 words (``layout.eligibility_words`` per row); bit ``p`` is bit ``p % 64`` of word
``p // 64``. Bloom positions use double hashing over blake2b, which is stable across processes and
platforms (Python's ``hash()`` is salted per process, so it cannot be used here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from freshet.layout import BITS_PER_WORD, BloomField


def bloom_positions(field: BloomField, value: str) -> list[int]:
    """Absolute bit positions that ``value`` sets in ``field``'s Bloom block.

    >>> f = BloomField("region", offset=64, width_bits=128, num_hashes=3)
    >>> ps = bloom_positions(f, "PT"); len(ps) <= 3 and all(64 <= p < 192 for p in ps)
    True
    >>> bloom_positions(f, "PT") == bloom_positions(f, "PT")
    True
    """
    digest = hashlib.blake2b(f"{field.name}\x00{value}".encode(), digest_size=16).digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little") | 1
    return sorted({field.offset + (h1 + i * h2) % field.width_bits for i in range(field.num_hashes)})


def words_from_positions(positions: Iterable[int], num_words: int) -> npt.NDArray[np.int64]:
    """Pack absolute bit positions into ``num_words`` int64 words.

    >>> words_from_positions([0, 63, 64], 2).tolist()
    [-9223372036854775807, 1]
    """
    words = np.zeros(num_words, dtype=np.uint64)
    for p in positions:
        if not 0 <= p < num_words * BITS_PER_WORD:
            raise ValueError(f"bit position {p} outside {num_words} words")
        words[p // BITS_PER_WORD] |= np.uint64(1) << np.uint64(p % BITS_PER_WORD)
    return words.view(np.int64)


def positions_from_words(words: npt.NDArray[np.int64]) -> list[int]:
    """Inverse of ``words_from_positions``.

    >>> positions_from_words(words_from_positions([3, 70], 2))
    [3, 70]
    """
    bits = np.unpackbits(np.ascontiguousarray(words, dtype="<i8").view(np.uint8), bitorder="little")
    return [int(p) for p in np.flatnonzero(bits)]
