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
    decode_deltas,
    encode_delta,
    encode_features,
    encode_key,
    record_bytes,
)
from freshet.errors import FreshetError
from freshet.layout import REGION_FIRST_FEATURE, FeatureColumn, TensorLayout
from freshet.versions import (
    MAX_SEQ,
    MAX_TIME_MS,
    embedding_version,
    event_version,
    feature_version,
    tombstone_version,
    version_time_ms,
)
from freshet.wire import FEATURES_KIND, features_record_bytes

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
        deltas = decode_deltas(value, WIDE)
    except DeltaDecodeError as err:
        assert decode_batch([value], WIDE).rejected == {err.reason: 1}
        return
    # what decodes is a valid record, byte for byte
    if value[3] == FEATURES_KIND:
        first = deltas[0]
        values = {d.region: float(d.values[0]) for d in deltas}
        assert encode_features(first.item_id, first.version, first.event_time_ms, values, WIDE) == value
    else:
        assert [encode_delta(d, WIDE) for d in deltas] == [value]


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(st.lists(st.binary(max_size=120), max_size=30))
def test_batches_of_garbage_account_for_every_record(values: list[bytes]) -> None:
    batch = decode_batch(values, WIDE)
    records = len(set(batch.source_index.tolist())) + len(batch.marker_index)
    assert records + sum(batch.rejected.values()) == len(values)


# ---------------------------------------------------------------- FEATURES records


def _rows(values: list[bytes], layout: TensorLayout) -> list[tuple[int, ...]]:
    batch = decode_batch(values, layout)
    assert batch.rejected == {}
    return sorted(zip(batch.kind.tolist(), batch.item_id.tolist(), batch.region.tolist(), batch.version.tolist(),
                      batch.event_time_ms.tolist(), batch.feature_values.tolist(), strict=True))  # fmt: skip


def test_a_features_record_is_the_feature_deltas_it_holds() -> None:
    version = feature_version(60_000, 1)
    record = encode_features(8, version, 60_000, {2: 1.5, 4: -0.0}, LAYOUT)
    assert len(record) == features_record_bytes(LAYOUT) == HEADER_BYTES + 8 + 4 * LAYOUT.num_features
    singles = [feature(LAYOUT, 8, column, 60_000, value, firing=1) for column, value in ((0, 1.5), (2, -0.0))]
    assert decode_deltas(record, LAYOUT) == singles
    assert _rows([record], LAYOUT) == _rows([encode_delta(d, LAYOUT) for d in singles], LAYOUT)
    with pytest.raises(DeltaDecodeError, match="features_record"):
        decode_delta(record, LAYOUT)


@settings(deadline=None)  # timing varies on a shared machine; correctness does not
@given(
    st.lists(
        st.dictionaries(
            st.integers(2, 3), st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1
        ),
        max_size=8,
    )
)
def test_features_records_decode_to_the_rows_of_their_single_deltas(rows: list[dict[int, float]]) -> None:
    records, singles = [], []
    for item, values in enumerate(rows):
        version = feature_version(1_000 * item, 0)
        records.append(encode_features(item, version, 1_000 * item, values, WIDE))
        singles += [
            encode_delta(feature(WIDE, item, r - 2, 1_000 * item, v), WIDE) for r, v in values.items()
        ]
    assert _rows(records, WIDE) == _rows(singles, WIDE)


GOOD_FEATURES = encode_features(8, feature_version(60_000, 0), 59_999, {2: 1.0, 3: 2.0}, LAYOUT)
MASK_AT = HEADER_BYTES

FEATURES_REJECTIONS = [
    ("region", _patch(GOOD_FEATURES, MASK_AT, "<Q", 0)),  # an empty row
    ("region", _patch(GOOD_FEATURES, MASK_AT, "<Q", 1 << LAYOUT.num_features)),  # a column the layout lacks
    ("region", _patch(GOOD_FEATURES, 4, "<H", REGION_FIRST_FEATURE + 1)),
    ("non_finite", _patch(GOOD_FEATURES, MASK_AT + 8 + 4, "<f", float("nan"))),
    ("features_padding", _patch(GOOD_FEATURES, MASK_AT + 8 + 8, "<f", 1.0)),  # a value outside the mask
    ("length", GOOD_FEATURES[:-4]),
    ("negative_version", _patch(GOOD_FEATURES, 24, "<q", -1)),
]


@pytest.mark.parametrize(("reason", "value"), FEATURES_REJECTIONS, ids=[r for r, _ in FEATURES_REJECTIONS])
def test_each_features_rejection_is_counted_by_reason(reason: str, value: bytes) -> None:
    batch = decode_batch([GOOD_FEATURE, value, GOOD_FEATURES], LAYOUT)
    assert batch.rejected == {reason: 1}
    assert batch.source_index.tolist() == [0, 2, 2], "the single delta, then the good record's two"


def test_encode_features_refuses_what_a_replica_would() -> None:
    version = feature_version(60_000, 0)
    with pytest.raises(DeltaEncodeError, match="holds no value"):
        encode_features(1, version, 0, {}, LAYOUT)
    with pytest.raises(DeltaEncodeError, match="region 5: region"):
        encode_features(1, version, 0, {2: 1.0, 5: 1.0}, LAYOUT)
    with pytest.raises(DeltaEncodeError, match="non_finite"):
        encode_features(1, version, 0, {2: float("inf")}, LAYOUT)


def test_a_layout_of_more_than_64_feature_columns_has_no_features_records() -> None:
    wide = TensorLayout(embedding_dim=4, feature_columns=tuple(FeatureColumn(f"f{i}", i) for i in range(65)))
    assert features_record_bytes(wide) is None
    with pytest.raises(DeltaEncodeError, match="65 feature columns"):
        encode_features(1, 1, 0, {2: 1.0}, wide)
    record = GOOD_FEATURES[:8] + wide.layout_hash_bytes + GOOD_FEATURES[16:]
    assert decode_batch([record], wide).rejected == {"unknown_kind": 1}


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
