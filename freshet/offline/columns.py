"""A windowed source's events as columns: what each windowed feature needs, gathered in one pass.

The features are the job's own (``freshet.job_logic.WindowedFeature``: filter, field, operator, region).

Per event the pass keeps the item, the event time, the watermark it arrived under, one bit per feature
whose filter takes it, and the values the features aggregate: a float column per numerically aggregated
field (``float(value) + 0.0``, as the aggregators read numbers) and a ``stable_hash64`` column per field
counted by ``approx_distinct``; the value is the one ``WindowedFeature.value_of`` takes. Filters and hashes are memoized on the values they read, so the
per-event cost does not grow with the number of features.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from freshet.aggregators import stable_hash64
from freshet.job_logic import WindowedFeature
from freshet.offline.sources import Arrived

MEMO_LIMIT = 1 << 16
_SCALARS = (str, int, float, bool, type(None))


def _hashed(feature: WindowedFeature) -> bool:
    """Whether the feature aggregates value hashes (``approx_distinct``) rather than numbers."""
    return feature.operator.feature.aggregation == "approx_distinct"


@dataclass(frozen=True)
class FeatureEvents:
    """The events one feature takes, in arrival order, as columns."""

    item_ids: npt.NDArray[np.int64]
    ts_ms: npt.NDArray[np.int64]
    watermark_ms: npt.NDArray[np.int64]
    #: the aggregated numbers (float64), or the value hashes (uint64) for ``approx_distinct``; None for count
    values: npt.NDArray[Any] | None = None

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    def take(self, index: npt.NDArray[Any]) -> FeatureEvents:
        """The events at ``index`` (a mask or positions), still in arrival order when ``index`` is."""
        values = None if self.values is None else self.values[index]
        return FeatureEvents(self.item_ids[index], self.ts_ms[index], self.watermark_ms[index], values)


def memo_key(value: object) -> tuple[type, object]:
    """A dict key telling apart what the predicates and hashes tell apart (``True`` vs ``1``, lists).

    >>> memo_key(True) != memo_key(1), memo_key(["a"]) == memo_key(["a"])
    (True, True)
    """
    if isinstance(value, _SCALARS):
        return (type(value), value)
    return (type(value), json.dumps(value, sort_keys=True, default=repr))


class WindowedColumns:
    """Collects one source's events for its windowed features (``add``), then hands out ``events(i)``."""

    def __init__(self, features: Sequence[WindowedFeature]) -> None:
        if len(features) > 64:
            raise ValueError(f"{len(features)} windowed features on one source; backfill handles up to 64")
        self.features = tuple(features)
        self._filter_fields = sorted({t.field for f in features if f.filter for _, t in f.filter.tests("")})
        self._value_fields = sorted({f.field for f in features if f.field is not None})
        self._field_bits = {
            name: sum(1 << i for i, f in enumerate(features) if f.field == name)
            for name in self._value_fields
        }
        self._hashed = {
            name: any(_hashed(f) for f in features if f.field == name) for name in self._value_fields
        }
        self._numeric = {
            name: any(not _hashed(f) for f in features if f.field == name) for name in self._value_fields
        }
        self._masks: dict[tuple[object, ...], int] = {}
        self._hashes: dict[tuple[type, object], int] = {}
        self._items, self._ts, self._watermarks, self._bits = array("q"), array("q"), array("q"), array("Q")
        self._numbers = {name: array("d") for name in self._value_fields if self._numeric[name]}
        self._hash_values = {name: array("Q") for name in self._value_fields if self._hashed[name]}

    def add(self, arrived: Sequence[Arrived]) -> None:
        """Append events (each with the watermark it arrived under) in arrival order."""
        nan = float("nan")
        for event, watermark in arrived:
            fields = event.fields
            bits = self._mask(fields)
            self._items.append(event.item_id)
            self._ts.append(event.ts_ms)
            self._watermarks.append(watermark)
            self._bits.append(bits)
            for name, column in self._numbers.items():
                taken = bits & self._field_bits[name]
                column.append(float(fields[name]) + 0.0 if taken else nan)  # + 0.0: -0.0 reads as 0.0
            for name, hashes in self._hash_values.items():
                hashes.append(self._hash(fields[name]) if bits & self._field_bits[name] else 0)

    def __len__(self) -> int:
        return len(self._items)

    def events(self, index: int) -> FeatureEvents:
        """The events feature ``index`` takes."""
        feature = self.features[index]
        bits = np.frombuffer(self._bits, dtype=np.uint64) if self._bits else np.zeros(0, np.uint64)
        taken = (bits >> np.uint64(index)) & np.uint64(1) == 1
        values: npt.NDArray[Any] | None = None
        if feature.field is not None:
            source = self._hash_values if _hashed(feature) else self._numbers
            values = _numpy(source[feature.field], np.uint64 if _hashed(feature) else np.float64)[taken]
        return FeatureEvents(_numpy(self._items, np.int64)[taken], _numpy(self._ts, np.int64)[taken],
                             _numpy(self._watermarks, np.int64)[taken], values)  # fmt: skip

    def _mask(self, fields: Mapping[str, Any]) -> int:
        key = tuple(memo_key(fields.get(name)) for name in self._filter_fields)
        bits = self._masks.get(key)
        if bits is None:
            record = {name: fields[name] for name in self._filter_fields if name in fields}
            bits = sum(
                1 << i for i, f in enumerate(self.features) if f.filter is None or f.filter.matches(record)
            )
            if len(self._masks) < MEMO_LIMIT:
                self._masks[key] = bits
        return bits

    def _hash(self, value: object) -> int:
        key = memo_key(value)
        found = self._hashes.get(key)
        if found is None:
            found = stable_hash64(value)  # type: ignore[arg-type]  # a declared field kind it can hash
            if len(self._hashes) < MEMO_LIMIT:
                self._hashes[key] = found
        return found


def _numpy(values: array[Any], dtype: type[np.generic]) -> npt.NDArray[Any]:
    return np.frombuffer(values, dtype=dtype) if len(values) else np.zeros(0, dtype=dtype)
