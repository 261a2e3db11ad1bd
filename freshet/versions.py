"""The version rule of DESIGN contract 2: versions derived from event time and the computation.

All regions of an item share one timeline, so a delete can be compared with every region:
``version = time_ms << 20 | seq`` with ``0 <= seq < 2**20``. Twenty bits of sequence let a hot
item's window re-fire once per late event (a million times) within its allowed lateness; 43 bits of
millisecond time reach the year 2248.

* embedding: ``embedding_version(publish_time_ms)``, the item's publish event time (seq 0);
* eligibility: ``eligibility_version(change_time_ms)``, the attribute change event time (seq 0);
* feature column: ``feature_version(window_end_ms, firing)``, the window end, and the firing number in seq
  (a late firing of the same window carries a larger version than the on-time one);
* tombstone: ``tombstone_version(delete_time_ms)``, the delete event time with the largest seq, so a delete wins
  over every other delta of the same millisecond.

Each is a pure function of event time and the computation, so a stream re-emitted after a Flink restore
carries the same versions, and a replica that keeps the newest version per (item, region) converges.
"""

from __future__ import annotations

VERSION_SEQ_BITS = 20
MAX_SEQ = (1 << VERSION_SEQ_BITS) - 1
#: event times above this would overflow int64 once shifted
MAX_TIME_MS = (1 << (63 - VERSION_SEQ_BITS)) - 1


def event_version(time_ms: int, seq: int = 0) -> int:
    """The version of a delta computed at event time ``time_ms``; ``seq`` orders deltas within one ms.

    >>> event_version(5, 3) > event_version(5, 2) > event_version(4, 1023)
    True
    """
    if not 0 <= time_ms <= MAX_TIME_MS:
        raise ValueError(f"event time {time_ms} ms outside [0, {MAX_TIME_MS}]")
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"sequence {seq} outside [0, {MAX_SEQ}]")
    return time_ms << VERSION_SEQ_BITS | seq


def feature_version(window_end_ms: int, firing: int) -> int:
    """Version of a window result: window end, then firing number (0 on time, 1.. late updates).

    >>> feature_version(60_000, 0) < feature_version(60_000, 1) < feature_version(60_001, 0)
    True
    """
    return event_version(window_end_ms, firing)


def embedding_version(publish_time_ms: int) -> int:
    """Version of an item embedding: the item's publish event time.

    >>> embedding_version(1) == 1 << VERSION_SEQ_BITS
    True
    """
    return event_version(publish_time_ms)


def eligibility_version(change_time_ms: int) -> int:
    """Version of an item's eligibility words: the attribute change event time.

    >>> eligibility_version(2) > embedding_version(1)
    True
    """
    return event_version(change_time_ms)


def tombstone_version(delete_time_ms: int) -> int:
    """Version of a delete: it wins over every other delta of the same millisecond.

    >>> tombstone_version(7) > feature_version(7, MAX_SEQ - 1) and tombstone_version(7) < embedding_version(8)
    True
    """
    return event_version(delete_time_ms, MAX_SEQ)


def version_time_ms(version: int) -> int:
    """The event time a version was derived from.

    >>> version_time_ms(feature_version(123, 4))
    123
    """
    return version >> VERSION_SEQ_BITS
