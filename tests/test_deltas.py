"""The delta codec: round trips, every rejection reason, fuzzing, and the version rule."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_helpers import eligibility, embedding, feature, random_stream, small_layout, tombstone, wide_layout

from freshet.deltas import (
    HEADER_BYTES,
    Delta,
    DeltaDecodeError,
    DeltaEncodeError,
    DeltaKind,
    batch_of,
    decode_batch,
    decode_delta,
    encode_delta,
    encode_key,
    record_bytes,
)
from freshet.errors import FreshetError
from freshet.versions import (
    MAX_SEQ,
    MAX_TIME_MS,
    embedding_version,
    event_version,
    feature_version,
    tombstone_version,
    version_time_ms,
)

LAYOUT = small_layout()
WIDE = wide_layout()

EXAMPLES = [
    embedding(7, 1_000, [0.5, -1.0, 3.25, 0.0], model_version=3),
    feature(LAYOUT, 8, 2, 60_000, 0.125, firing=2),
    eligibility(9, 5, [0b1011]),
    tombstone(2**62, 99),
    embedding(-5, 0, [1e30, -1e-30, -0.0, 7.0]),
]


@pytest.mark.parametrize("delta", EXAMPLES, ids=lambda d: d.kind.name)
def test_round_trip(delta: Delta) -> None:
    value = encode_delta(delta, LAYOUT)
    assert len(value) == record_bytes(delta.kind, LAYOUT)
    assert decode_delta(value, LAYOUT) == delta


def test_batch_groups_by_kind_and_keeps_input_positions() -> None:
    deltas = random_stream(WIDE, random.Random(1), 300)
    values = [encode_delta(d, WIDE) for d in deltas]
    batch = decode_batch(values, WIDE)
    assert len(batch) == len(deltas) and batch.rejected == {}
    assert np.all(np.diff(batch.kind.astype(int)) >= 0)
    for i in range(len(batch)):
        assert batch.delta(i) == deltas[batch.source_index[i]]
    assert sorted(batch.source_index.tolist()) == list(range(len(deltas)))


def test_batch_value_matrices_line_up_with_kind_slices() -> None:
    batch = batch_of(EXAMPLES[::-1], LAYOUT)
    emb = batch.kind_slice(DeltaKind.EMBEDDING)
    assert batch.embeddings.shape == (emb.stop - emb.start, LAYOUT.embedding_dim)
    assert batch.embeddings.dtype == np.float32 and batch.eligibility_words.dtype == np.int64
    assert batch.item_id[emb].tolist() == [-5, 7]
    assert batch.feature_values.tolist() == [0.125]
    assert batch.eligibility_words.tolist() == [[0b1011]]


def _patch(value: bytes, offset: int, fmt: str, field_value: object) -> bytes:
    patched = bytearray(value)
    struct.pack_into(fmt, patched, offset, field_value)
    return bytes(patched)


GOOD_EMBEDDING = encode_delta(EXAMPLES[0], LAYOUT)
GOOD_FEATURE = encode_delta(EXAMPLES[1], LAYOUT)
GOOD_ELIGIBILITY = encode_delta(EXAMPLES[2], LAYOUT)

REJECTIONS = [
    ("truncated", GOOD_EMBEDDING[: HEADER_BYTES - 1]),
    ("truncated", b""),
    ("bad_magic", b"XX" + GOOD_EMBEDDING[2:]),
    ("codec_version", _patch(GOOD_EMBEDDING, 2, "<B", 2)),
    (
        "layout_hash",
        encode_delta(embedding(7, 1, [1.0] * 8), WIDE)[:HEADER_BYTES] + GOOD_EMBEDDING[HEADER_BYTES:],
    ),
    ("unknown_kind", _patch(GOOD_EMBEDDING, 3, "<B", 9)),
    ("unknown_kind", _patch(GOOD_EMBEDDING, 3, "<B", 0)),
    ("length", GOOD_EMBEDDING[:-1]),
    ("length", GOOD_EMBEDDING + b"\0"),
    ("length", _patch(GOOD_EMBEDDING, 3, "<B", int(DeltaKind.FEATURE))),
    ("reserved", _patch(GOOD_EMBEDDING, 6, "<H", 1)),
    ("region", _patch(GOOD_EMBEDDING, 4, "<H", 1)),
    ("region", _patch(GOOD_FEATURE, 4, "<H", 1)),
    ("region", _patch(GOOD_FEATURE, 4, "<H", LAYOUT.num_regions)),
    ("region", _patch(GOOD_ELIGIBILITY, 4, "<H", 0)),
    ("negative_version", _patch(GOOD_EMBEDDING, 24, "<q", -1)),
    ("non_finite", _patch(GOOD_EMBEDDING, HEADER_BYTES + 4, "<f", float("nan"))),
    ("non_finite", _patch(GOOD_EMBEDDING, HEADER_BYTES, "<f", float("-inf"))),
    ("non_finite", _patch(GOOD_FEATURE, HEADER_BYTES, "<f", float("inf"))),
    ("eligibility_padding", _patch(GOOD_ELIGIBILITY, HEADER_BYTES, "<q", 1 << 40)),
    ("eligibility_padding", _patch(GOOD_ELIGIBILITY, HEADER_BYTES, "<q", -1)),
]


@pytest.mark.parametrize(("reason", "value"), REJECTIONS, ids=[r for r, _ in REJECTIONS])
def test_each_rejection_is_counted_by_reason(reason: str, value: bytes) -> None:
    batch = decode_batch([GOOD_FEATURE, value, GOOD_EMBEDDING], LAYOUT)
    assert batch.rejected == {reason: 1}
    assert batch.source_index.tolist() == [2, 0]
    with pytest.raises(DeltaDecodeError) as err:
        decode_delta(value, LAYOUT)
    assert err.value.reason == reason


def test_float16_layout_rejects_embeddings_that_would_overflow() -> None:
    half = small_layout(embedding_dtype="float16")
    value = encode_delta(embedding(1, 1, [1.0, 2.0, 3.0, 4.0]), half)
    assert decode_batch([_patch(value, HEADER_BYTES, "<f", 70_000.0)], half).rejected == {"non_finite": 1}
    with pytest.raises(DeltaEncodeError, match="non_finite"):
        encode_delta(embedding(1, 1, [1.0, 2.0, 3.0, 65_520.0]), half)


BAD_DELTAS = [
    (Delta(DeltaKind.EMBEDDING, 1, 0, 5, 5, np.zeros(3, np.float32)), "has 3 values, wants 4"),
    (Delta(DeltaKind.ELIGIBILITY, 1, 1, 5, 5, np.zeros(1, np.float32)), "dtype float32"),
    (Delta(DeltaKind.FEATURE, 1, 1, 5, 5, np.ones(1, np.float32)), "region"),
    (Delta(DeltaKind.FEATURE, 1, 2, -3, 5, np.ones(1, np.float32)), "negative_version"),
    (Delta(DeltaKind.FEATURE, 1, 2, 5, 5, np.array([np.nan], np.float32)), "non_finite"),
    (Delta(DeltaKind.ELIGIBILITY, 1, 1, 5, 5, np.array([1 << 50])), "eligibility_padding"),
    (Delta(DeltaKind.TOMBSTONE, 2**64, 0, 5, 5, np.zeros(0, np.float32)), "out of range"),
    (Delta(7, 1, 0, 5, 5, np.zeros(0, np.float32)), "unknown kind"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("delta", "message"), BAD_DELTAS, ids=[m for _, m in BAD_DELTAS])
def test_encode_refuses_invalid_deltas(delta: Delta, message: str) -> None:
    with pytest.raises(DeltaEncodeError, match=message):
        encode_delta(delta, LAYOUT)


def test_errors_share_the_freshet_base() -> None:
    assert issubclass(DeltaDecodeError, FreshetError) and issubclass(DeltaEncodeError, FreshetError)


# ---------------------------------------------------------------- properties

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
ids = st.integers(-(2**63), 2**63 - 1)
versions = st.integers(0, 2**63 - 1)


@st.composite
def valid_deltas(draw: st.DrawFn) -> Delta:
    kind = draw(st.sampled_from(DeltaKind))
    item, version, ts, model = draw(ids), draw(versions), draw(ids), draw(ids)
    if kind is DeltaKind.EMBEDDING:
        vec = np.array(draw(st.lists(finite32, min_size=8, max_size=8)), np.float32)
        return Delta(kind, item, 0, version, ts, vec, model)
    if kind is DeltaKind.FEATURE:
        region = draw(st.integers(2, WIDE.num_regions - 1))
        return Delta(kind, item, region, version, ts, np.array([draw(finite32)], np.float32), model)
    if kind is DeltaKind.ELIGIBILITY:
        words = np.array(draw(st.lists(ids, min_size=2, max_size=2)), np.int64)
        return Delta(kind, item, 1, version, ts, words, model)
    return Delta(kind, item, 0, version, ts, np.zeros(0, np.float32), model)


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(st.lists(valid_deltas(), max_size=20))
def test_any_valid_deltas_round_trip_through_a_batch(deltas: list[Delta]) -> None:
    batch = decode_batch([encode_delta(d, WIDE) for d in deltas], WIDE)
    assert batch.rejected == {}
    assert [batch.delta(i) for i in np.argsort(batch.source_index)] == deltas


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_the_one_error(value: bytes) -> None:
    _decode_or_reject(value)


@settings(max_examples=300, deadline=None)
@given(
    valid_deltas(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)
)
def test_mutated_records_decode_canonically_or_raise(delta: Delta, flips: list[tuple[int, int]]) -> None:
    value = bytearray(encode_delta(delta, WIDE))
    for pos, byte in flips:
        value[pos % len(value)] = byte
    _decode_or_reject(bytes(value))


def _decode_or_reject(value: bytes) -> None:
    try:
        delta = decode_delta(value, WIDE)
    except DeltaDecodeError as err:
        assert decode_batch([value], WIDE).rejected == {err.reason: 1}
        return
    assert encode_delta(delta, WIDE) == value  # what decodes is a valid delta, byte for byte


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(st.lists(st.binary(max_size=120), max_size=30))
def test_batches_of_garbage_account_for_every_record(values: list[bytes]) -> None:
    batch = decode_batch(values, WIDE)
    assert len(batch) + sum(batch.rejected.values()) == len(values)


# ---------------------------------------------------------------- versions and keys


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(st.integers(0, MAX_TIME_MS - 1), st.integers(0, MAX_SEQ), st.integers(0, MAX_SEQ))
def test_versions_order_by_time_then_sequence(time_ms: int, seq_a: int, seq_b: int) -> None:
    assert (feature_version(time_ms, seq_a) < feature_version(time_ms, seq_b)) == (seq_a < seq_b)
    assert feature_version(time_ms, MAX_SEQ) < embedding_version(time_ms + 1)
    assert version_time_ms(event_version(time_ms, seq_a)) == time_ms


def test_a_delete_wins_over_everything_of_its_millisecond() -> None:
    assert tombstone_version(10) > feature_version(10, MAX_SEQ - 1) > embedding_version(10)


@pytest.mark.parametrize(("time_ms", "seq"), [(-1, 0), (MAX_TIME_MS + 1, 0), (5, -1), (5, MAX_SEQ + 1)])
def test_versions_refuse_out_of_range_inputs(time_ms: int, seq: int) -> None:
    with pytest.raises(ValueError):
        feature_version(time_ms, seq)


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(ids)
def test_key_is_the_decimal_id(item_id: int) -> None:
    assert int(encode_key(item_id).decode("ascii")) == item_id
