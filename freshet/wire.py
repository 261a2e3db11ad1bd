"""The byte layout of a delta record and its vectorized checks (codec version 1; see ``freshet.deltas``).

``decode_records`` concatenates the record values once, checks every header with a handful of numpy
comparisons, then views each kind's records as one structured array: no Python loop per field.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from freshet.layout import (
    BITS_PER_WORD,
    REGION_ELIGIBILITY,
    REGION_EMBEDDING,
    REGION_FIRST_FEATURE,
    TensorLayout,
)

Ints = npt.NDArray[np.int64]
Bytes = npt.NDArray[np.uint8]

MAGIC = b"FD"
CODEC_VERSION = 1
HEADER_BYTES = 48
#: a checkpoint marker (``freshet.markers``): not a delta; decoded apart, never applied, never a rejection
MARKER_KIND = 5
MARKER_BYTES = 56
#: FEATURE deltas of one item that share a version and an event time, in one record (``freshet.deltas``):
#: decoded into the FEATURE deltas it holds, so no batch has rows of this kind
FEATURES_KIND = 6
#: the column mask of a FEATURES record is one little-endian u64
FEATURES_MAX_COLUMNS = 64

HEADER_STRUCT = struct.Struct("<2sBBHH8sqqqq")
HEADER_FIELDS: list[tuple[str, str]] = [
    ("magic", "<u2"),
    ("codec", "u1"),
    ("kind", "u1"),
    ("region", "<u2"),
    ("reserved", "<u2"),
    ("layout_hash", "<u8"),
    ("item_id", "<i8"),
    ("version", "<i8"),
    ("event_time_ms", "<i8"),
    ("model_version", "<i8"),
]
HEADER_DTYPE = np.dtype(HEADER_FIELDS)
_MAGIC_U16 = int.from_bytes(MAGIC, "little")


class DeltaKind(IntEnum):
    EMBEDDING = 1
    FEATURE = 2
    ELIGIBILITY = 3
    TOMBSTONE = 4


def record_bytes(kind: DeltaKind, layout: TensorLayout) -> int:
    """Size of an encoded record of ``kind`` for ``layout``."""
    payload = {
        DeltaKind.EMBEDDING: 4 * layout.embedding_dim,
        DeltaKind.FEATURE: 4,
        DeltaKind.ELIGIBILITY: 8 * layout.eligibility_words,
        DeltaKind.TOMBSTONE: 0,
    }[kind]
    return HEADER_BYTES + payload


def features_record_bytes(layout: TensorLayout) -> int | None:
    """Size of a FEATURES record for ``layout`` (header, column mask, a float32 per feature column); None where
    the layout has more feature columns than the mask has bits (its features travel one per record)."""
    if not 0 < layout.num_features <= FEATURES_MAX_COLUMNS:
        return None
    return HEADER_BYTES + 8 + 4 * layout.num_features


def decode_records(
    values: Sequence[bytes], layout: TensorLayout
) -> tuple[list[KindPart], dict[str, int], Ints]:
    """The valid records of each kind (in ``DeltaKind`` order; the FEATURE part also holds the deltas of the
    FEATURES records, after the single ones), the count of the others by reason, and the positions of the
    checkpoint markers (neither deltas nor rejected)."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    joined = np.frombuffer(b"".join(values), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    header, reason = _check_headers(joined, starts, lengths, layout)
    parts = []
    for kind in DeltaKind:
        chosen = np.flatnonzero((reason == _OK) & (header["kind"] == kind))
        part = _decode_kind(kind, joined, chosen, starts[chosen], header[chosen], layout)
        reason[chosen] = part.reason
        parts.append(part)
    chosen = np.flatnonzero((reason == _OK) & (header["kind"] == FEATURES_KIND))
    if chosen.size:
        rows, reason[chosen] = _decode_features(joined, chosen, starts[chosen], header[chosen], layout)
        single = parts[DeltaKind.FEATURE - 1]
        parts[DeltaKind.FEATURE - 1] = KindPart(
            np.concatenate([single.header, rows.header]), np.concatenate([single.values, rows.values]),
            np.concatenate([single.source_index, rows.source_index]), single.reason)  # fmt: skip
    return parts, _count_reasons(reason), np.flatnonzero(reason == _MARKER).astype(np.int64)


def _decode_features(
    joined: Bytes, source_index: Ints, starts: Ints, header: npt.NDArray[np.void], layout: TensorLayout
) -> tuple[KindPart, npt.NDArray[np.int8]]:
    """The FEATURE deltas of FEATURES records (by record, then by column), and each record's reason: ``region``
    for an empty mask or a bit past the layout's columns, ``non_finite`` for a value in the mask that is not
    finite, ``features_padding`` for a value outside it that is not +0.0 (so each row has one encoding)."""
    columns = layout.num_features
    record = np.dtype([*HEADER_FIELDS, ("mask", "<u8"), ("values", "<f4", (columns,))])
    rows = _rows(joined, starts, record.itemsize).view(record)[:, 0]
    mask, values = rows["mask"], rows["values"]
    present = ((mask[:, None] >> np.arange(columns, dtype=np.uint64)) & np.uint64(1)).astype(bool)
    beyond = (
        (mask >> np.uint64(columns)) != 0 if columns < FEATURES_MAX_COLUMNS else np.zeros(mask.shape, bool)
    )
    reason = np.zeros(starts.shape[0], dtype=np.int8)
    _flag(reason, (mask == 0) | beyond, "region")
    _flag(reason, (present & ~np.isfinite(values)).any(axis=1), "non_finite")
    _flag(reason, (~present & (values.view(np.uint32) != 0)).any(axis=1), "features_padding")
    at, column = np.nonzero(present & (reason == _OK)[:, None])
    expanded = header[at].copy()
    expanded["kind"] = DeltaKind.FEATURE
    expanded["region"] = REGION_FIRST_FEATURE + column
    part = KindPart(expanded, values[at, column].reshape(-1, 1), source_index[at], np.zeros(at.size, np.int8))
    return part, reason


_REASONS = ("ok", "truncated", "bad_magic", "codec_version", "layout_hash", "unknown_kind", "length",
            "reserved", "region", "negative_version", "non_finite", "eligibility_padding", "marker",
            "features_padding")  # fmt: skip
_OK = 0
_CODE = {name: code for code, name in enumerate(_REASONS)}
_MARKER = _CODE["marker"]
EMBEDDING_LIMIT = {"float32": np.inf, "float16": 65504.0, "bfloat16": 3.3895313892515355e38}


def _flag(reason: npt.NDArray[np.int8], bad: npt.NDArray[np.bool_], name: str) -> None:
    """Record ``name`` for the records that are ``bad`` and had no earlier reason."""
    reason[(reason == _OK) & bad] = _CODE[name]


def _rows(joined: Bytes, starts: Ints, size: int) -> Bytes:
    """The ``size`` bytes at each of ``starts`` as a contiguous uint8[len(starts), size] (one gather)."""
    if starts.size == 0:
        return np.zeros((0, size), dtype=np.uint8)
    return np.lib.stride_tricks.sliding_window_view(joined, size)[starts]


def _check_headers(
    joined: Bytes, starts: Ints, lengths: Ints, layout: TensorLayout
) -> tuple[npt.NDArray[np.void], npt.NDArray[np.int8]]:
    reason = np.zeros(lengths.shape[0], dtype=np.int8)
    header = np.zeros(lengths.shape[0], dtype=HEADER_DTYPE)
    full = lengths >= HEADER_BYTES
    header[full] = _rows(joined, starts[full], HEADER_BYTES).view(HEADER_DTYPE)[:, 0]
    _flag(reason, (lengths == MARKER_BYTES) & (header["kind"] == MARKER_KIND) & (header["magic"] == _MAGIC_U16)
          & (header["codec"] == CODEC_VERSION), "marker")  # fmt: skip
    _flag(reason, ~full, "truncated")
    _flag(reason, header["magic"] != _MAGIC_U16, "bad_magic")
    _flag(reason, header["codec"] != CODEC_VERSION, "codec_version")
    _flag(reason, header["layout_hash"] != int.from_bytes(layout.layout_hash_bytes, "little"), "layout_hash")
    expected, region_lo, region_hi = kind_tables(layout)
    kind = header["kind"]
    _flag(reason, expected[kind] < 0, "unknown_kind")
    _flag(reason, expected[kind] != lengths, "length")
    _flag(reason, header["reserved"] != 0, "reserved")
    _flag(reason, (header["region"] < region_lo[kind]) | (header["region"] >= region_hi[kind]), "region")
    _flag(reason, header["version"] < 0, "negative_version")
    return header, reason


@functools.lru_cache(maxsize=16)
def kind_tables(layout: TensorLayout) -> tuple[Ints, Ints, Ints]:
    """Per kind byte: expected record length (-1: unknown kind) and the allowed region range."""
    expected = np.full(256, -1, dtype=np.int64)
    region_lo = np.zeros(256, dtype=np.int64)
    region_hi = np.zeros(256, dtype=np.int64)
    ranges = {
        DeltaKind.EMBEDDING: (REGION_EMBEDDING, REGION_EMBEDDING + 1),
        DeltaKind.FEATURE: (REGION_FIRST_FEATURE, layout.num_regions),
        DeltaKind.ELIGIBILITY: (REGION_ELIGIBILITY, REGION_ELIGIBILITY + 1),
        DeltaKind.TOMBSTONE: (REGION_EMBEDDING, REGION_EMBEDDING + 1),
    }
    for kind, (lo, hi) in ranges.items():
        expected[kind], region_lo[kind], region_hi[kind] = record_bytes(kind, layout), lo, hi
    features = features_record_bytes(layout)
    if features is not None:  # else the kind is unknown to this layout
        expected[FEATURES_KIND] = features
        region_lo[FEATURES_KIND], region_hi[FEATURES_KIND] = REGION_FIRST_FEATURE, REGION_FIRST_FEATURE + 1
    return expected, region_lo, region_hi


@dataclass(frozen=True)
class KindPart:
    header: npt.NDArray[np.void]  # the header fields of this kind's valid records
    values: npt.NDArray[Any]  # their payloads
    source_index: Ints  # their positions in the input
    reason: npt.NDArray[np.int8]  # int8 per record: _OK or the payload's rejection reason


def _decode_kind(
    kind: DeltaKind,
    joined: Bytes,
    source_index: Ints,
    starts: Ints,
    header: npt.NDArray[np.void],
    layout: TensorLayout,
) -> KindPart:
    value_dtype = _value_dtype(kind, layout)
    record = np.dtype([*HEADER_FIELDS, ("values", value_dtype)])
    payload = _rows(joined, starts, record.itemsize).view(record)[:, 0]["values"]
    reason = np.zeros(starts.shape[0], dtype=np.int8)
    if kind in (DeltaKind.EMBEDDING, DeltaKind.FEATURE):
        limit = EMBEDDING_LIMIT[layout.embedding_dtype] if kind is DeltaKind.EMBEDDING else np.inf
        finite = np.isfinite(payload) if limit == np.inf else np.abs(payload) <= limit  # NaN compares False
        _flag(reason, ~finite.all(axis=1), "non_finite")
    if kind is DeltaKind.ELIGIBILITY:
        _flag(reason, (payload.view(np.uint64) & padding_mask(layout)).any(axis=1), "eligibility_padding")
    if not reason.any():  # the common case: skip three copies
        return KindPart(header, payload, source_index, reason)
    ok = reason == _OK
    return KindPart(header[ok], payload[ok], source_index[ok], reason)


def _value_dtype(kind: DeltaKind, layout: TensorLayout) -> np.dtype[np.generic] | tuple[str, tuple[int, ...]]:
    if kind is DeltaKind.EMBEDDING:
        return ("<f4", (layout.embedding_dim,))
    if kind is DeltaKind.FEATURE:
        return ("<f4", (1,))
    if kind is DeltaKind.ELIGIBILITY:
        return ("<i8", (layout.eligibility_words,))
    return ("<f4", (0,))


@functools.lru_cache(maxsize=16)
def padding_mask(layout: TensorLayout) -> npt.NDArray[np.uint64]:
    """uint64 per word: the bits beyond ``layout.eligibility_bits``, which a valid delta leaves clear."""
    positions = np.arange(layout.eligibility_words * BITS_PER_WORD) >= layout.eligibility_bits
    return np.packbits(positions, bitorder="little").view("<u8")


def _count_reasons(reason: npt.NDArray[np.int8]) -> dict[str, int]:
    counts = np.bincount(reason.astype(np.int64), minlength=len(_REASONS))
    return {name: int(counts[code]) for code, name in enumerate(_REASONS)
            if code not in (_OK, _MARKER) and counts[code]}  # fmt: skip
