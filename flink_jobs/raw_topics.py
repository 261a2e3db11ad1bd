"""The job's raw source topics read once, bounded, into freshet's event log (kafka-python only, no PyFlink).

``export_raw_topics`` reads each topic from its earliest offset up to the **high watermark each partition
had when the read started**, with ``isolation_level=read_committed``, on assigned partitions (no consumer
group, nothing committed), and writes the raw values byte for byte, malformed ones included, with
``freshet.offline.eventlog``'s writer under the *declared* topic name: the directory ``freshet backfill
--events DIR`` reads. Records produced after the read started are not read, so one export is one cut.

**Order.** One partition's records keep their offset order. The partitions of one topic are merged by
record timestamp, then partition, then offset (a merge: it never reorders a partition). With the default
``CreateTime`` that is the order the records were produced in, the closest one consumer of all
partitions comes to what the job's source saw; exact only for a single-partition topic.

The bound is the fetch response's high watermark, not ``end_offsets`` (ListOffsets "latest"), which some
Kafka-protocol brokers answer wrongly.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from freshet.errors import FreshetError
from freshet.offline.eventlog import Format, topic_files, write_event_log

#: records buffered per partition before its fetching pauses (the merge waits for the slowest partition)
BUFFER_RECORDS = 20_000
#: records per event-log file written
RECORDS_PER_FILE = 200_000
_PROGRESS_EVERY = 2_000


class RawTopicsError(FreshetError):
    """The raw topics cannot be read as asked (no broker, no such topic, no progress); the message says why."""


class LoggedRecord(NamedTuple):
    """One raw record as ``freshet.offline.eventlog.write_event_log`` writes it."""

    topic: str
    key: bytes
    value: bytes
    ts_ms: int


@dataclass
class TopicCut:
    """What one bounded read covered: per partition ``[first offset, high watermark at the start)``."""

    declared: str
    topic: str
    bounds: dict[int, tuple[int, int]]
    records: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "records": self.records,
                "partitions": {str(p): list(b) for p, b in sorted(self.bounds.items())}}  # fmt: skip


def export_raw_topics(
    bootstrap: str,
    topics: Mapping[str, str],
    out: Path,
    *,
    fmt: Format = "parquet",
    progress: Any = None,
    timeout_s: float = 10.0,
) -> dict[str, dict[str, Any]]:
    """Write each topic of ``topics`` (declared name → topic read) under ``out/<declared>/``; returns the cuts.

    ``progress`` has ``stage(description, total)`` and ``advance(n)`` (``freshet.offline.backfill.Progress``).
    ``timeout_s`` bounds every wait: for the broker, for a partition's first fetch, and for a partition
    that stops making progress below its bound (e.g. behind a transaction that stays open).
    """
    _refuse_existing_logs(out, topics)
    cuts = {}
    for declared, topic in topics.items():
        with BoundedTopicRead(bootstrap, topic, timeout_s=timeout_s) as read:
            cut = TopicCut(declared, topic, read.bounds)
            if progress is not None:
                progress.stage(f"reading {topic} (bounded at its start)", read.total)
            records = (
                LoggedRecord(declared, r.key or b"", r.value or b"", r.timestamp) for r in read.records()
            )
            cut.records = write_event_log(_counted(records, progress), out, fmt,
                                          records_per_file=RECORDS_PER_FILE).get(declared, 0)  # fmt: skip
        cuts[declared] = cut.to_dict()
    return cuts


def _refuse_existing_logs(out: Path, topics: Mapping[str, str]) -> None:
    """Every read starts at the earliest offset, so appending one to an older log would log records twice."""
    taken = [declared for declared in topics if topic_files(out, declared)]
    if taken:
        raise RawTopicsError(f"{out}: already holds a log of {', '.join(taken)}; an export reads each topic from "
                             "its earliest offset, so write it to an empty directory")  # fmt: skip


def _counted(records: Iterator[LoggedRecord], progress: Any) -> Iterator[LoggedRecord]:
    """``records``, advancing ``progress`` every few thousand (a rich update per record would cost more)."""
    pending = 0
    for record in records:
        yield record
        pending += 1
        if pending == _PROGRESS_EVERY and progress is not None:
            progress.advance(pending)
            pending = 0
    if pending and progress is not None:
        progress.advance(pending)


@dataclass
class _Partition:
    tp: TopicPartition
    start: int
    stop: int = -1
    buffer: deque[Any] = field(default_factory=deque)


class BoundedTopicRead:
    """One topic from its earliest offsets to the high watermarks of each partition's first fetch.

    Opening it connects, assigns every partition and fetches until each partition's high watermark is
    known: that is ``bounds``, fixed from then on. ``records()`` yields the records below the bounds in the
    merge order of the module docstring. Use it as a context manager (the consumer is closed on exit).
    """

    def __init__(self, bootstrap: str, topic: str, *, timeout_s: float = 10.0) -> None:
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self._consumer = _connect(bootstrap, timeout_s)
        try:
            self._parts = self._assign()
            self._fix_bounds()
        except BaseException:
            self._consumer.close()
            raise

    def __enter__(self) -> BoundedTopicRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._consumer.close()

    @property
    def bounds(self) -> dict[int, tuple[int, int]]:
        return {p.tp.partition: (p.start, p.stop) for p in self._parts}

    @property
    def total(self) -> int:
        """Offsets to read (records, plus transaction markers and aborted records that take offsets)."""
        return sum(p.stop - p.start for p in self._parts)

    def records(self) -> Iterator[Any]:
        """The records below the bounds: each partition in offset order, partitions merged by timestamp."""
        while True:
            yield from self._merge_ready()
            if all(self._finished(p) and not p.buffer for p in self._parts):
                return
            self._poll()

    def _assign(self) -> list[_Partition]:
        found = sorted(self._consumer.partitions_for_topic(self.topic))
        if not found:
            raise RawTopicsError(f"{self.bootstrap}: no topic {self.topic!r} (create it, or map the declared "
                                 "topic with --topic DECLARED=ACTUAL)")  # fmt: skip
        tps = [TopicPartition(self.topic, p) for p in found]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        return [_Partition(tp, self._consumer.position(tp)) for tp in tps]

    def _fix_bounds(self) -> None:
        """Fetch until every partition has answered once; its high watermark then is its bound."""
        deadline = time.monotonic() + self.timeout_s
        while any(p.stop < 0 for p in self._parts):
            self._poll(check_idle=False)
            for p in self._parts:
                highwater = self._consumer.highwater(p.tp)
                if p.stop < 0 and highwater is not None:
                    p.stop = highwater
            if time.monotonic() > deadline:
                waiting = [p.tp.partition for p in self._parts if p.stop < 0]
                raise RawTopicsError(f"{self.bootstrap}: {self.topic} partitions {waiting} gave no fetch answer "
                                     f"within {self.timeout_s} s")  # fmt: skip
        for p in self._parts:  # what the first fetches returned may reach past a bound fixed earlier
            p.buffer = deque(r for r in p.buffer if r.offset < p.stop)

    def _finished(self, p: _Partition) -> bool:
        return p.stop >= 0 and self._consumer.position(p.tp) >= p.stop

    def _merge_ready(self) -> Iterator[Any]:
        """Yield buffered records in merge order while every unfinished partition has one to compare."""
        while True:
            heads = []
            for p in self._parts:
                if p.buffer:
                    heads.append((p.buffer[0].timestamp, p.tp.partition, p.buffer[0].offset, p))
                elif not self._finished(p):
                    return  # its next record may sort first: fetch it before choosing
            if not heads:
                return
            yield min(heads, key=lambda h: h[:3])[3].buffer.popleft()

    def _poll(self, *, check_idle: bool = True) -> None:
        """Fetch more for partitions not finished and not full; fail if none moves within ``timeout_s``."""
        full = [p.tp for p in self._parts if len(p.buffer) >= BUFFER_RECORDS or self._finished(p)]
        self._consumer.pause(*full)
        self._consumer.resume(*[p.tp for p in self._parts if p.tp not in full])
        deadline = time.monotonic() + self.timeout_s
        while True:
            before = [self._consumer.position(p.tp) for p in self._parts]
            got = self._consumer.poll(timeout_ms=200)
            for p in self._parts:
                p.buffer.extend(r for r in got.get(p.tp, ()) if p.stop < 0 or r.offset < p.stop)
            moved = got or before != [self._consumer.position(p.tp) for p in self._parts]
            if moved or not check_idle:
                return
            if time.monotonic() > deadline:
                raise RawTopicsError(self._stuck())

    def _stuck(self) -> str:
        where = ", ".join(f"partition {p.tp.partition} at offset {self._consumer.position(p.tp)} of {p.stop}"
                          for p in self._parts if not self._finished(p))  # fmt: skip
        return (f"{self.bootstrap}: {self.topic} made no progress for {self.timeout_s} s ({where}); a transaction "
                "left open holds read_committed consumers back until it commits, aborts or times out")  # fmt: skip


def _connect(bootstrap: str, timeout_s: float) -> KafkaConsumer:
    """An assigned-partitions consumer: no group, no commits, read_committed, every wait bounded."""
    timeout_ms = int(timeout_s * 1000)
    try:
        return KafkaConsumer(
            bootstrap_servers=bootstrap.split(","), group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", allow_auto_create_topics=False, fetch_max_wait_ms=100,
            bootstrap_timeout_ms=timeout_ms, request_timeout_ms=max(timeout_ms, 1000) + 1000,
            client_id="freshet-raw-topics",
        )  # fmt: skip
    except KafkaError as exc:
        raise RawTopicsError(f"{bootstrap}: no Kafka broker answered within {timeout_s} s ({exc!r})") from exc
