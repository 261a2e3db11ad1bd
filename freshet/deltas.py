"""Tensor deltas: the records the Flink jobs emit and every replica applies in place.

A delta says "item I, region R := V at version v" — absolute, never "add 1" (DESIGN contract 2).

Versions follow ``freshet.versions`` (re-exported here): ``time_ms << 20 | seq`` on one timeline shared
by every region, so that a tombstone can be compared with each of them.

**Wire format** (codec version 1): one Kafka record value is one delta, a fixed 48-byte little-endian header
and a payload whose size the kind and the layout fix::

    offset  size  field
    0       2     magic b"FD"
    2       1     codec version (1)
    3       1     kind (DeltaKind)
    4       2     region (u16)
    6       2     reserved, 0
    8       8     layout hash (the 8 bytes of TensorLayout.layout_hash_bytes)
    16      8     item id (i64)
    24      8     version (i64, >= 0)
    32      8     event time ms (i64; for the freshness SLI)
    40      8     model version (i64; the item tower that produced an embedding)
    48      ...   EMBEDDING: f32[embedding_dim] · FEATURE: f32[1] · ELIGIBILITY: i64[words] · TOMBSTONE: none

Kind 5 is no delta but a checkpoint marker (56 bytes, ``freshet.markers``): ``decode_batch`` lists where
markers are and neither applies nor rejects them.

Kind 6, FEATURES, holds the FEATURE deltas of one item that share a version and an event time (the features
whose windows end together): region ``2`` (the first feature region), then a u64 column mask (bit j: region
``2 + j``) and an f32 per feature column of the layout, +0.0 outside the mask. ``decode_batch`` turns it into
the FEATURE deltas it holds, so applying it is applying them. The delta job writes one where several features
fire at once (``freshet.job_logic.encode_firings``): ``python -m bench.job`` over 5,000 items sent 0.83M records
for 3.65M deltas. Layouts of more than 64 feature columns have no FEATURES kind.

Fixed-size records were chosen over Arrow IPC because a Kafka record holds one keyed delta: a one-row Arrow
IPC stream of the same fields takes 1392 bytes for a 64-dim embedding against 304 here (schema and framing
in every record; ``bench.core`` measures both), while fixed-size records of one kind decode as one numpy
structured-array view over their concatenation (1.9M embedding, 4.3M feature records/s on 2 cores).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from freshet.errors import FreshetError
from freshet.layout import REGION_FIRST_FEATURE, TensorLayout
from freshet.versions import (
    eligibility_version,
    embedding_version,
    event_version,
    feature_version,
    tombstone_version,
    version_time_ms,
)
from freshet.wire import (
    CODEC_VERSION,
    EMBEDDING_LIMIT,
    FEATURES_KIND,
    HEADER_BYTES,
    HEADER_STRUCT,
    MAGIC,
    DeltaKind,
    Ints,
    KindPart,
    decode_records,
    features_record_bytes,
    kind_tables,
    padding_mask,
    record_bytes,
)


class DeltaDecodeError(FreshetError):
    """A delta record could not be decoded; ``reason`` is the counted rejection reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"delta rejected: {reason}")
        self.reason = reason


class DeltaEncodeError(FreshetError):
    """A delta is not valid for the layout and was not encoded (a bug in the emitting job)."""


@dataclass(frozen=True, eq=False)
class Delta:
    """One absolute, versioned write of one region of one item (or the delete of the item)."""

    kind: DeltaKind
    item_id: int
    region: int
    version: int
    event_time_ms: int
    values: npt.NDArray[Any]
    model_version: int = 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Delta):
            return NotImplemented
        return _delta_key(self) == _delta_key(other)

    __hash__ = None  # type: ignore[assignment]


def _delta_key(d: Delta) -> tuple[object, ...]:
    values = np.asarray(d.values)
    return (int(d.kind), d.item_id, d.region, d.version, d.event_time_ms, d.model_version, values.dtype.str,
            values.shape, values.tobytes())  # fmt: skip


def encode_key(item_id: int) -> bytes:
    """Kafka key of every delta of ``item_id``: its ASCII decimal, so they share one partition.

    >>> encode_key(-42)
    b'-42'
    """
    return str(int(item_id)).encode("ascii")


def encode_delta(delta: Delta, layout: TensorLayout) -> bytes:
    """The Kafka record value of ``delta``; raises ``DeltaEncodeError`` if it is not valid for ``layout``.

    It checks what ``decode_batch`` checks, so an encoded delta is never rejected by a replica of the
    same layout (a property test holds the two to it).
    """
    kind = _kind_of(delta)
    values = _payload(delta, kind, layout)
    reason = _invalid_reason(delta, kind, values, layout)
    if reason is not None:
        raise DeltaEncodeError(f"{kind.name} delta of item {delta.item_id} is invalid: {reason}")
    return _header(delta, layout) + values.tobytes()


def _kind_of(delta: Delta) -> DeltaKind:
    try:
        return DeltaKind(delta.kind)
    except ValueError as exc:
        raise DeltaEncodeError(f"delta of item {delta.item_id} has unknown kind {delta.kind!r}") from exc


def _header(delta: Delta, layout: TensorLayout, kind: int | None = None) -> bytes:
    """The header of ``delta`` (of the record kind ``kind``, if given: a FEATURES record's)."""
    kind = int(delta.kind) if kind is None else kind
    try:
        return HEADER_STRUCT.pack(MAGIC, CODEC_VERSION, kind, delta.region, 0, layout.layout_hash_bytes,
                            delta.item_id, delta.version, delta.event_time_ms, delta.model_version)  # fmt: skip
    except (struct.error, OverflowError) as exc:
        raise DeltaEncodeError(f"delta of item {delta.item_id} has a field out of range: {exc}") from exc


def _payload(delta: Delta, kind: DeltaKind, layout: TensorLayout) -> npt.NDArray[Any]:
    """The payload as little-endian values of the wire dtype, count and dtype checked."""
    dtype, count = {
        DeltaKind.EMBEDDING: ("<f4", layout.embedding_dim),
        DeltaKind.FEATURE: ("<f4", 1),
        DeltaKind.ELIGIBILITY: ("<i8", layout.eligibility_words),
        DeltaKind.TOMBSTONE: ("<f4", 0),
    }[kind]
    values = np.asarray(delta.values)
    if values.size != count:
        raise DeltaEncodeError(
            f"{kind.name} delta of item {delta.item_id} has {values.size} values, wants {count}"
        )
    if values.dtype.kind not in "fiu" or (dtype == "<i8" and values.dtype.kind == "f"):
        raise DeltaEncodeError(
            f"{kind.name} delta of item {delta.item_id} has values of dtype {values.dtype}"
        )
    return values.astype(dtype).reshape(count)


def _invalid_reason(
    delta: Delta, kind: DeltaKind, values: npt.NDArray[Any], layout: TensorLayout
) -> str | None:
    """The reason ``decode_batch`` would give for this delta, checked one record at a time."""
    _, region_lo, region_hi = kind_tables(layout)
    if not region_lo[kind] <= delta.region < region_hi[kind]:
        return "region"
    if delta.version < 0:
        return "negative_version"
    limit = EMBEDDING_LIMIT[layout.embedding_dtype] if kind is DeltaKind.EMBEDDING else np.inf
    finite = np.isfinite(values) & (np.abs(values) <= limit)
    if kind in (DeltaKind.EMBEDDING, DeltaKind.FEATURE) and not finite.all():
        return "non_finite"
    if kind is DeltaKind.ELIGIBILITY and (values.view(np.uint64) & padding_mask(layout)).any():
        return "eligibility_padding"
    return None


def encode_features(
    item_id: int, version: int, event_time_ms: int, values: Mapping[int, float], layout: TensorLayout
) -> bytes:
    """One FEATURES record: ``values`` by feature region, all at ``version`` and ``event_time_ms``.

    It decodes into the FEATURE deltas ``Delta(FEATURE, item_id, region, version, event_time_ms, [value])``;
    raises ``DeltaEncodeError`` where one of those would be invalid or the layout has no FEATURES kind.

    >>> from freshet.spec import load_feature_set
    >>> from pathlib import Path
    >>> layout = load_feature_set(Path(__file__).parent.parent / "feature_defs").layout()
    >>> record = encode_features(7, 5 << 20, 4, {2: 1.0, 4: 3.0}, layout)
    >>> [(d.region, float(d.values[0])) for d in decode_deltas(record, layout)]
    [(2, 1.0), (4, 3.0)]
    """
    size = features_record_bytes(layout)
    if size is None:
        raise DeltaEncodeError(f"a layout of {layout.num_features} feature columns has no FEATURES records")
    if not values:
        raise DeltaEncodeError(f"FEATURES record of item {item_id} holds no value")
    row = np.zeros(layout.num_features, dtype="<f4")
    mask = 0
    for region, value in values.items():
        delta = Delta(DeltaKind.FEATURE, item_id, region, version, event_time_ms, np.array([value], "<f4"))
        reason = _invalid_reason(delta, DeltaKind.FEATURE, np.asarray(delta.values), layout)
        if reason is not None:
            raise DeltaEncodeError(
                f"FEATURES record of item {item_id} is invalid at region {region}: {reason}"
            )
        mask |= 1 << (region - REGION_FIRST_FEATURE)
        row[region - REGION_FIRST_FEATURE] = value
    first = Delta(DeltaKind.FEATURE, item_id, REGION_FIRST_FEATURE, version, event_time_ms, row)
    header = _header(first, layout, kind=FEATURES_KIND)
    record = header + struct.pack("<Q", mask) + row.tobytes()
    assert len(record) == size
    return record


def decode_deltas(value: bytes, layout: TensorLayout) -> list[Delta]:
    """The deltas of one record: one, or those of a FEATURES record; raises ``DeltaDecodeError`` (and nothing
    else) if it is no valid delta record."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise DeltaDecodeError("not_bytes")
    batch = decode_batch([bytes(value)], layout)
    reason = _reason_of(batch)
    if reason is not None:
        raise DeltaDecodeError(reason)
    if len(batch) == 0:
        raise DeltaDecodeError("checkpoint_marker")  # a marker, no delta (``freshet.markers``)
    return [batch.delta(i) for i in range(len(batch))]


def decode_delta(value: bytes, layout: TensorLayout) -> Delta:
    """Decode one record of one delta; raises ``DeltaDecodeError`` (and nothing else) if it is not a valid
    delta, or holds several (a FEATURES record: ``decode_deltas`` reads it)."""
    deltas = decode_deltas(value, layout)
    if len(deltas) != 1:
        raise DeltaDecodeError("features_record")
    return deltas[0]


def _reason_of(batch: DecodedBatch) -> str | None:
    return next(iter(batch.rejected), None)


@dataclass(frozen=True, eq=False)
class DecodedBatch:
    """Columnar, validated deltas of one poll, grouped by kind (EMBEDDING, FEATURE, ELIGIBILITY, TOMBSTONE).

    ``embeddings[i]`` is the value of the i-th EMBEDDING record, and likewise ``feature_values`` and
    ``eligibility_words``; ``kind_slice(kind)`` gives the rows of a kind. ``source_index`` is each record's
    position in the input, ``rejected`` counts the records left out by reason.
    """

    layout_hash: str
    kind: npt.NDArray[np.uint8]  # uint8[n]
    item_id: Ints  # int64[n]
    region: Ints  # int64[n]
    version: Ints  # int64[n]
    event_time_ms: Ints  # int64[n]
    model_version: Ints  # int64[n]
    source_index: Ints  # int64[n]
    embeddings: npt.NDArray[np.float32]  # float32[n_embedding, dim]
    feature_values: npt.NDArray[np.float32]  # float32[n_feature]
    eligibility_words: Ints  # int64[n_eligibility, words]
    rejected: dict[str, int] = field(default_factory=dict)
    #: positions in the input of the checkpoint markers (``freshet.markers``): not deltas, not rejected
    marker_index: Ints = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    def kind_slice(self, kind: DeltaKind) -> slice:
        """The rows of ``kind`` (records are grouped by kind in enum order)."""
        start = int(np.searchsorted(self.kind, int(kind), side="left"))
        return slice(start, int(np.searchsorted(self.kind, int(kind), side="right")))

    def select(self, keep: npt.NDArray[np.bool_]) -> DecodedBatch:
        """The records where ``keep`` is true, value matrices included; ``rejected`` is unchanged."""

        def of_kind(kind: DeltaKind, matrix: npt.NDArray[Any]) -> npt.NDArray[Any]:
            chosen: npt.NDArray[Any] = matrix[keep[self.kind_slice(kind)]]
            return chosen

        columns = ("kind", "item_id", "region", "version", "event_time_ms", "model_version", "source_index")
        return replace(
            self,
            **{name: getattr(self, name)[keep] for name in columns},
            embeddings=of_kind(DeltaKind.EMBEDDING, self.embeddings),
            feature_values=of_kind(DeltaKind.FEATURE, self.feature_values),
            eligibility_words=of_kind(DeltaKind.ELIGIBILITY, self.eligibility_words),
        )

    def delta(self, i: int) -> Delta:
        """Row ``i`` as a ``Delta`` (for tests and logs; the apply path stays columnar)."""
        kind = DeltaKind(int(self.kind[i]))
        return Delta(kind, int(self.item_id[i]), int(self.region[i]), int(self.version[i]),
                     int(self.event_time_ms[i]), self._values(kind, i), int(self.model_version[i]))  # fmt: skip

    def _values(self, kind: DeltaKind, i: int) -> npt.NDArray[Any]:
        j = i - self.kind_slice(kind).start
        if kind is DeltaKind.EMBEDDING:
            return self.embeddings[j : j + 1].reshape(-1).copy()
        if kind is DeltaKind.FEATURE:
            return self.feature_values[j : j + 1].copy()
        if kind is DeltaKind.ELIGIBILITY:
            return self.eligibility_words[j : j + 1].reshape(-1).copy()
        return np.zeros(0, dtype=np.float32)


def decode_batch(values: Sequence[bytes], layout: TensorLayout) -> DecodedBatch:
    """Decode Kafka record values into one columnar batch; invalid records are counted, not raised.

    Vectorized: one pass over the concatenated bytes checks every header, then each kind's records are
    viewed as one structured array. Rejection reasons, first that applies: ``truncated``, ``bad_magic``,
    ``codec_version``, ``layout_hash``, ``unknown_kind``, ``length``, ``reserved``, ``region``,
    ``negative_version``, ``non_finite``, ``eligibility_padding``. Checkpoint markers are neither decoded
    nor rejected: their positions are ``marker_index`` (``freshet.markers`` reads them).
    """
    parts, rejected, markers = decode_records(values, layout)
    return _assemble(parts, rejected, markers, layout)


def _assemble(
    parts: list[KindPart], rejected: dict[str, int], markers: Ints, layout: TensorLayout
) -> DecodedBatch:
    header = np.concatenate([p.header for p in parts])
    emb, feat, elig, _ = (p.values for p in parts)
    return DecodedBatch(
        layout_hash=layout.layout_hash,
        kind=header["kind"].astype(np.uint8),
        item_id=header["item_id"].astype(np.int64),
        region=header["region"].astype(np.int64),
        version=header["version"].astype(np.int64),
        event_time_ms=header["event_time_ms"].astype(np.int64),
        model_version=header["model_version"].astype(np.int64),
        source_index=np.concatenate([p.source_index for p in parts]).astype(np.int64),
        embeddings=np.ascontiguousarray(emb, dtype=np.float32).reshape(-1, layout.embedding_dim),
        feature_values=np.ascontiguousarray(feat, dtype=np.float32).reshape(-1),
        eligibility_words=np.ascontiguousarray(elig, dtype=np.int64).reshape(-1, layout.eligibility_words),
        rejected=rejected,
        marker_index=markers,
    )


def batch_of(deltas: Sequence[Delta], layout: TensorLayout) -> DecodedBatch:
    """Encode and decode ``deltas``: the batch a replica would build from them."""
    return decode_batch([encode_delta(d, layout) for d in deltas], layout)


__all__ = [
    "CODEC_VERSION",
    "HEADER_BYTES",
    "MAGIC",
    "DecodedBatch",
    "Delta",
    "DeltaDecodeError",
    "DeltaEncodeError",
    "DeltaKind",
    "batch_of",
    "decode_batch",
    "decode_delta",
    "decode_deltas",
    "eligibility_version",
    "embedding_version",
    "encode_delta",
    "encode_features",
    "encode_key",
    "event_version",
    "feature_version",
    "record_bytes",
    "tombstone_version",
    "version_time_ms",
]
