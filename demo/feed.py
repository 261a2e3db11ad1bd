"""Kafka side of the demo: create the topics, send yesterday's history, then pace today's feed in real time."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from freshet.feedgen import FeedConfig, FeedGenerator, RawRecord

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


def _producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024)


def send_history(bootstrap: str, config: FeedConfig, now_ms: int, seconds: int) -> int:
    """Yesterday's posts and engagement (event time two days to one day ago), sent as fast as possible."""
    gen = FeedGenerator(config, start_ms=now_ms - 2 * DAY_MS)
    producer = _producer(bootstrap)
    sent = 0
    try:
        # Spread ``seconds`` of generated traffic over the day so the history spans many windows.
        stretch = DAY_MS // max(seconds, 1)
        for second in range(seconds):
            for record in gen.second(second):
                shifted = second * (stretch - 1000)
                producer.send(record.topic, key=record.key, value=_shift(record, shifted))
                sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent


def _shift(record: RawRecord, by_ms: int) -> bytes:
    """The record's JSON with its event times moved by ``by_ms`` (the history generator runs compressed)."""
    import json

    try:
        doc = json.loads(record.value)
    except ValueError:
        return record.value
    for key in ("ts", "created_at"):
        if isinstance(doc.get(key), int) and doc[key] > 10**12:
            doc[key] += by_ms
    return json.dumps(doc, separators=(",", ":")).encode()


class LiveFeed(threading.Thread):
    """Sends one generated second of the feed per wall-clock second until stopped."""

    def __init__(self, bootstrap: str, gen: FeedGenerator) -> None:
        super().__init__(name="demo-feed", daemon=True)
        self._servers, self._gen = bootstrap, gen
        self._stop_event = threading.Event()
        self.sent: Counter[str] = Counter()
        self.malformed_sent = 0

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        producer = _producer(self._servers)
        started = time.monotonic()
        try:
            second = 0
            while not self._stop_event.is_set():
                for record in self._gen.second(second):
                    producer.send(record.topic, key=record.key, value=record.value)
                    self.sent[record.topic] += 1
                producer.flush()
                second += 1
                self._stop_event.wait(max(0.0, started + second - time.monotonic()))
        finally:
            producer.close()


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
