"""Raw event parsing: bytes from a source topic → a checked event, or a rejection with its reason.

Every raw record either becomes an ``Event`` or a ``Rejected`` carrying the original bytes and a
reason a person can act on; nothing is dropped silently (DESIGN contract 8). The Flink job sends
rejections to the dead-letter topic; backfill counts them the same way.

Absurd timestamps are judged against fixed bounds, not the wall clock: a replay years later must
accept and reject exactly what the live stream did.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

FieldKind = Literal["int", "number", "string", "strings", "bool", "any"]

#: 2001-09-09T01:46:40Z and 2100-01-01T00:00:00Z in ms: events outside are rejected as absurd.
MIN_EVENT_TIME_MS = 1_000_000_000_000
MAX_EVENT_TIME_MS = 4_102_444_800_000
MAX_ITEM_ID = (1 << 63) - 1


@dataclass(frozen=True)
class Event:
    """A parsed raw event: the item it is about, its event time, and its fields."""

    source: str
    item_id: int
    ts_ms: int
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Rejected:
    """A raw record that could not be used, with why; goes to the dead-letter topic."""

    source: str
    reason: str
    raw: bytes

    @property
    def reason_code(self) -> str:
        """The stable first word of the reason, used as a metric label (``malformed_json``, ...)."""
        return self.reason.split(":", 1)[0]

    def to_dlq_json(self) -> bytes:
        """The dead-letter record: source, reason, and the original bytes (latin-1, lossless)."""
        return json.dumps(
            {"source": self.source, "reason": self.reason, "raw": self.raw.decode("latin-1")},
            separators=(",", ":"),
        ).encode()


def parse_event(
    raw: bytes,
    *,
    source: str,
    key_field: str,
    time_field: str,
    required: Mapping[str, FieldKind] | None = None,
) -> Event | Rejected:
    """Parse one JSON object and check the key, the event time and the ``required`` fields.

    >>> e = parse_event(b'{"item_id": 7, "ts": 1700000000000, "action": "like"}',
    ...                 source="engagement", key_field="item_id", time_field="ts", required={"action": "string"})
    >>> (e.item_id, e.ts_ms, e.fields["action"])
    (7, 1700000000000, 'like')
    >>> parse_event(b'{"item_id": 7', source="engagement", key_field="item_id", time_field="ts").reason_code
    'malformed_json'
    """
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Rejected(source, f"malformed_json: {exc}", raw)
    if not isinstance(doc, dict):
        return Rejected(source, f"not_an_object: expected a JSON object, got {type(doc).__name__}", raw)
    problem = _check(doc, key_field, time_field, required or {})
    if problem:
        return Rejected(source, problem, raw)
    ts_ms = _time_ms(doc[time_field])
    assert ts_ms is not None  # _check proved it
    return Event(source, int(doc[key_field]), ts_ms, doc)


def _check(doc: Mapping[str, Any], key_field: str, time_field: str, required: Mapping[str, FieldKind]) -> str:
    key = doc.get(key_field)
    if key is None:
        return f"missing_field: {key_field!r} (the item id) is missing"
    if not _is_int(key) or not 0 <= key <= MAX_ITEM_ID:
        return f"wrong_type: {key_field!r} must be a non-negative 64-bit integer, got {key!r}"
    if time_field not in doc:
        return f"missing_field: {time_field!r} (the event time) is missing"
    ts = _time_ms(doc[time_field])
    if ts is None:
        return f"wrong_type: {time_field!r} must be epoch milliseconds or an ISO-8601 time, got {doc[time_field]!r}"
    if not MIN_EVENT_TIME_MS <= ts < MAX_EVENT_TIME_MS:
        return f"absurd_timestamp: {time_field!r} = {ts} ms is outside [2001-09-09, 2100-01-01)"
    for name, kind in required.items():
        if name not in doc or doc[name] is None:
            return f"missing_field: {name!r} is missing"
        if not _is_kind(doc[name], kind):
            return f"wrong_type: {name!r} must be {kind}, got {doc[name]!r}"
    return ""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_kind(v: object, kind: FieldKind) -> bool:
    if kind == "int":
        return _is_int(v)
    if kind == "number":
        return (_is_int(v) or isinstance(v, float)) and v == v and abs(float(v)) != float("inf")  # type: ignore[arg-type]
    if kind == "string":
        return isinstance(v, str)
    if kind == "strings":
        return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
    if kind == "bool":
        return isinstance(v, bool)
    return True


def _time_ms(v: object) -> int | None:
    """Epoch ms from an int (ms) or an ISO-8601 string with a zone; ``None`` if neither."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            parsed = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        return int(parsed.timestamp() * 1000)
    return None
