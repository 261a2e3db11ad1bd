"""Raw event parsing: every malformed input yields a reason and keeps its bytes; good input parses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freshet.events import Event, Rejected, parse_event

REQUIRED = {"action": "string", "dwell_ms": "number"}


def parse(raw: bytes) -> Event | Rejected:
    return parse_event(raw, source="engagement", key_field="item_id", time_field="ts", required=REQUIRED)


GOOD = {"item_id": 42, "ts": 1_763_800_000_000, "action": "like", "dwell_ms": 1200.5}


def with_(**changes: object) -> bytes:
    doc = {**GOOD, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe\x00garbage", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (with_(item_id=...), "missing_field: 'item_id' (the item id) is missing"),
        (with_(item_id="42"), "wrong_type: 'item_id' must be a non-negative 64-bit integer, got '42'"),
        (with_(item_id=-1), "wrong_type: 'item_id' must be a non-negative 64-bit integer, got -1"),
        (with_(item_id=True), "wrong_type: 'item_id' must be a non-negative 64-bit integer, got True"),
        (with_(item_id=1 << 63), "wrong_type: 'item_id'"),
        (with_(ts=...), "missing_field: 'ts' (the event time) is missing"),
        (with_(ts="yesterday"), "wrong_type: 'ts' must be epoch milliseconds or an ISO-8601 time"),
        (with_(ts="2026-11-22T10:00:00"), "wrong_type: 'ts'"),  # no zone: ambiguous, refused
        (with_(ts=1_763_800_000), "absurd_timestamp: 'ts' = 1763800000 ms"),  # seconds, not ms
        (with_(ts=9_999_999_999_999), "absurd_timestamp"),
        (with_(action=...), "missing_field: 'action' is missing"),
        (with_(action=None), "missing_field: 'action' is missing"),
        (with_(action=3), "wrong_type: 'action' must be string, got 3"),
        (with_(dwell_ms="long"), "wrong_type: 'dwell_ms' must be number"),
        (
            b'{"item_id": 42, "ts": 1763800000000, "action": "like", "dwell_ms": NaN}',
            "wrong_type: 'dwell_ms'",
        ),
    ],
)
def test_bad_input_is_rejected_with_reason_and_original_bytes(raw: bytes, reason: str) -> None:
    result = parse(raw)
    assert isinstance(result, Rejected)
    assert result.reason.startswith(reason)
    assert result.raw == raw
    dlq = json.loads(result.to_dlq_json())
    assert dlq["raw"].encode("latin-1") == raw and dlq["source"] == "engagement"


def test_good_event_parses_with_iso_time() -> None:
    result = parse(with_(ts="2025-11-22T08:53:20Z"))
    assert isinstance(result, Event)
    assert (result.item_id, result.ts_ms, result.fields["action"]) == (42, 1_763_801_600_000, "like")


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_reject(raw: bytes) -> None:
    assert isinstance(parse(raw), Event | Rejected)
