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


def decode_records(
    values: Sequence[bytes], layout: TensorLayout
) -> tuple[list[KindPart], dict[str, int], Ints]:
    """The valid records of each kind (in ``DeltaKind`` order), the count of the others by reason, and the
    positions of the checkpoint markers (neither deltas nor rejected)."""
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
    return parts, _count_reasons(reason), np.flatnonzero(reason == _MARKER).astype(np.int64)


_REASONS = ("ok", "truncated", "bad_magic", "codec_version", "layout_hash", "unknown_kind", "length",
            "reserved", "region", "negative_version", "non_finite", "eligibility_padding", "marker")  # fmt: skip
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
