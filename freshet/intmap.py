"""``IntMap``: an int64 -> int64 hash map whose every operation takes whole arrays of keys.

The apply path looks up every item of a batch at once (100k ids in a few ms): a Python dict costs ~100 ns
a key through ``tolist`` and ``map``, while this open-addressing table (linear probing, Fibonacci hashing,
load kept at most 1/2) resolves all keys of one probe step in a handful of numpy operations. Deleted slots
keep a marker so that later probes walk past them; the table rebuilds when markers and entries fill half of it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]

_EMPTY, _FULL, _DELETED = 0, 1, 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class IntMap:
    """int64 keys to int64 values; ``get``/``put``/``drop`` take arrays of distinct keys.

    >>> m = IntMap(np.array([5, -7]), np.array([50, 70]))
    >>> m.get(np.array([-7, 5, 6])).tolist()
    [70, 50, -1]
    >>> m.drop(np.array([5])); len(m), m.one(5), m.one(-7)
    (1, None, 70)
    """

    def __init__(self, keys: Ints | None = None, values: Ints | None = None) -> None:
        self._allocate(16)
        if keys is not None and values is not None:
            self.put(keys, values)

    def _allocate(self, capacity: int) -> None:
        self._bits = capacity.bit_length() - 1
        self._keys = np.zeros(capacity, dtype=np.int64)
        self._values = np.zeros(capacity, dtype=np.int64)
        self._state = np.zeros(capacity, dtype=np.int8)
        self._count = 0
        self._used = 0  # full or deleted slots: what probing has to walk past

    def __len__(self) -> int:
        return self._count

    def get(self, keys: Ints, missing: int = -1) -> Ints:
        slots = self._find(keys)
        return np.where(slots >= 0, self._values[np.maximum(slots, 0)], missing)

    def one(self, key: int) -> int | None:
        slot = int(self._find(np.array([key], dtype=np.int64))[0])
        return None if slot < 0 else int(self._values[slot])

    def put(self, keys: Ints, values: Ints) -> None:
        """Insert or overwrite (``keys`` distinct)."""
        keys, values = np.asarray(keys, dtype=np.int64), np.asarray(values, dtype=np.int64)
        slots = self._find(keys)
        self._values[slots[slots >= 0]] = values[slots >= 0]
        new = slots < 0
        if new.any():
            self._reserve(int(new.sum()))
            self._insert(keys[new], values[new])

    def drop(self, keys: Ints) -> None:
        """Remove ``keys`` (all present, distinct)."""
        slots = self._find(np.asarray(keys, dtype=np.int64))
        if (slots < 0).any():
            raise KeyError(f"{int((slots < 0).sum())} keys to drop are not in the map")
        self._state[slots] = _DELETED
        self._count -= slots.shape[0]

    def arrays(self) -> tuple[Ints, Ints]:
        """All keys and their values, sorted by key (so equal maps give equal arrays, whatever their history)."""
        full = self._state == _FULL
        keys, values = self._keys[full], self._values[full]
        order = np.argsort(keys, kind="stable")
        return keys[order], values[order]

    def _home(self, keys: Ints) -> Ints:
        hashed = keys.astype(np.uint64) * _GOLDEN  # wraps mod 2**64
        return (hashed >> np.uint64(64 - self._bits)).astype(np.int64)

    def _find(self, keys: Ints) -> Ints:
        """Slot of each key, or -1."""
        found = np.full(keys.shape[0], -1, dtype=np.int64)
        pending, slots = np.arange(keys.shape[0]), self._home(keys)
        mask = self._keys.shape[0] - 1
        while pending.size:
            state = self._state[slots]
            hit = (state == _FULL) & (self._keys[slots] == keys[pending])
            found[pending[hit]] = slots[hit]
            going = ~hit & (state != _EMPTY)
            pending, slots = pending[going], (slots[going] + 1) & mask
        return found

    def _insert(self, keys: Ints, values: Ints) -> None:
        """Place keys known to be absent. Each probe step, keys aiming at a free slot all write their key there;
        the one whose key stayed has the slot (keys are distinct), the rest probe on: no sort needed."""
        pending, slots = np.arange(keys.shape[0]), self._home(keys)
        mask = self._keys.shape[0] - 1
        while pending.size:
            free = self._state[slots] != _FULL
            self._keys[slots[free]] = keys[pending[free]]
            won = free & (self._keys[slots] == keys[pending])
            claimed = slots[won]
            self._used += int((self._state[claimed] == _EMPTY).sum())
            self._values[claimed], self._state[claimed] = values[pending[won]], _FULL
            pending, slots = pending[~won], (slots[~won] + 1) & mask
        self._count += keys.shape[0]

    def _reserve(self, extra: int) -> None:
        """Rebuild (larger if needed) so that used slots stay at most half the table after adding ``extra``."""
        capacity = self._keys.shape[0]
        if 2 * (self._used + extra) <= capacity:
            return
        keys, values = self.arrays()
        while 2 * (keys.shape[0] + extra) > capacity:
            capacity *= 2
        self._allocate(capacity)
        self._insert(keys, values)
