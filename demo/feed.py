"""Kafka side of the demo: create the topics, send yesterday's history, then pace today's feed in real time."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from dataclasses import replace

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from demo.compare import JobWatermark, LateGate
from freshet.feedgen import FeedConfig, FeedGenerator, RawRecord
from freshet.offline.eventlog import EventLogAppender

DAY_MS = 86_400_000


def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    """Create each topic with its partition count; existing topics are left as they are."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="freshet-demo")
    try:
        for name, count in partitions.items():
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, num_partitions=count, replication_factor=1)])
    finally:
        admin.close()


def make_producer(bootstrap: str) -> KafkaProducer:
    # One request in flight: a retried batch cannot overtake the next, so each topic holds the records in
    # the order the event log has them.
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024,
                         max_in_flight_requests_per_connection=1)  # fmt: skip


def send(producer: KafkaProducer, records: list[RawRecord], log: EventLogAppender) -> None:
    """Hand ``records`` to the producer, then log them in the same order."""
    for record in records:
        producer.send(record.topic, key=record.key, value=record.value)
    log.append(records)


def send_history(bootstrap: str, config: FeedConfig, now_ms: int, seconds: int, log: EventLogAppender) -> int:
    """Yesterday's posts and engagement (event time two days to one day ago), sent as fast as possible.

    Without late events: sent in one burst, no event is late when the job reads it (its watermark lags far
    behind), and backfill could not know by how much; the live feed sends late events, gated.
    """
    gen = FeedGenerator(replace(config, late_share=0.0), start_ms=now_ms - 2 * DAY_MS)
    producer = make_producer(bootstrap)
    sent = 0
    try:
        # Spread ``seconds`` of generated traffic over the day so the history spans many windows.
        stretch = DAY_MS // max(seconds, 1)
        for second in range(seconds):
            records = [_shift(record, second * (stretch - 1000)) for record in gen.second(second)]
            send(producer, records, log)
            sent += len(records)
        producer.flush()
    finally:
        producer.close()
    return sent


def _shift(record: RawRecord, by_ms: int) -> RawRecord:
    """The record with its event times moved by ``by_ms`` (the history generator runs compressed)."""
    import json

    try:
        doc = json.loads(record.value)
    except ValueError:
        return record
    for key in ("ts", "created_at"):
        if isinstance(doc.get(key), int) and doc[key] > 10**12:
            doc[key] += by_ms
    value = json.dumps(doc, separators=(",", ":")).encode()
    return RawRecord(record.topic, record.key, value, record.ts_ms + by_ms)


class LiveFeed(threading.Thread):
    """Sends one generated second of the feed per wall-clock second until stopped, and logs what it sends.

    Engagement events behind the watermark (late ones) are held back and sent every ``late_every_s``
    seconds, once the job's watermark is the one backfill computes (``demo.compare``). ``ungated`` counts
    those sent without that (the job's watermark was not readable in time).
    """

    def __init__(self, bootstrap: str, gen: FeedGenerator, log: EventLogAppender, gate: LateGate,
                 watermark: JobWatermark, late_every_s: int = 5) -> None:  # fmt: skip
        super().__init__(name="demo-feed", daemon=True)
        self._servers, self._gen, self._log = bootstrap, gen, log
        self.gate, self._watermark, self._late_every_s = gate, watermark, late_every_s
        self._stop_event = threading.Event()
        self._held: list[RawRecord] = []
        self.sent: Counter[str] = Counter()
        self.ungated = 0

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        producer = make_producer(self._servers)
        started = time.monotonic()
        try:
            second = 0
            while not self._stop_event.is_set():
                now, held = self.gate.split(self._gen.second(second))
                self._send(producer, now)
                self._held += held
                if self._held and second % self._late_every_s == self._late_every_s - 1:
                    self._send_held(producer)
                producer.flush()
                second += 1
                self._stop_event.wait(max(0.0, started + second - time.monotonic()))
        finally:
            producer.close()

    def _send(self, producer: KafkaProducer, records: list[RawRecord]) -> None:
        send(producer, records, self._log)
        self.sent.update(r.topic for r in records)

    def _send_held(self, producer: KafkaProducer) -> None:
        producer.flush()
        gated = self._watermark.wait_for(self.gate.watermark_ms(), self._stop_event)
        if self._stop_event.is_set():
            return
        self.ungated += 0 if gated else len(self._held)
        self._send(producer, self._held)
        self._held = []


class TopicCounter(threading.Thread):
    """Counts records arriving on some topics (read_committed), e.g. the dead-letter and late topics."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        super().__init__(name="demo-topic-counter", daemon=True)
        self._servers, self._topics = bootstrap, topics
        self._stop_event = threading.Event()
        self.counts: Counter[str] = Counter()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self._servers, isolation_level="read_committed", enable_auto_commit=False
        )
        try:
            parts = [
                TopicPartition(t, p) for t in self._topics for p in consumer.partitions_for_topic(t) or ()
            ]
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            while not self._stop_event.is_set():
                for tp, records in consumer.poll(timeout_ms=500).items():
                    self.counts[tp.topic] += len(records)
        finally:
            consumer.close()
