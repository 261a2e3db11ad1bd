"""Kafka helpers shared by the tests (kafka-python): topics, producing, and reading a topic to its end.

Reading "to the end" uses ``assign()`` and the high watermark carried by fetch responses
(``consumer.highwater(tp)``): no consumer-group join (slow on the embedded broker) and no ``end_offsets``
(wrong there), so what a test proves does not depend on either.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Literal

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord

Isolation = Literal["read_committed", "read_uncommitted"]


def create_topic(bootstrap_servers: str, name: str, partitions: int = 1, timeout_s: float = 10.0) -> str:
    """Create ``name`` with ``partitions`` partitions and wait until its metadata lists all of them."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="freshet-tests")
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    wait_for_partitions(bootstrap_servers, name, partitions, timeout_s)
    return name


def wait_for_partitions(bootstrap_servers: str, topic: str, partitions: int, timeout_s: float = 10.0) -> None:
    """Block until the broker's metadata shows ``topic`` with ``partitions`` partitions."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        while len(consumer.partitions_for_topic(topic) or ()) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} did not show {partitions} partitions in {timeout_s} s")
            time.sleep(0.05)
    finally:
        consumer.close()


def produce(bootstrap_servers: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> list[int]:
    """Send ``(key, value)`` pairs with Kafka's default (murmur2) partitioner; returns each record's partition."""
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in records]
        producer.flush()
        return [future.get(timeout=10).partition for future in futures]
    finally:
        producer.close()


def assigned_consumer(
    bootstrap_servers: str, topic: str, isolation_level: Isolation = "read_committed"
) -> KafkaConsumer:
    """A consumer assigned to every partition of ``topic`` from the beginning; no group, no commits."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        isolation_level=isolation_level,
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=100,
    )
    wait_for_partitions(bootstrap_servers, topic, 1)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    return consumer


def caught_up(consumer: KafkaConsumer) -> bool:
    """Every assigned partition has a known high watermark and the consumer's position has reached it."""
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None or consumer.position(tp) < highwater:
            return False
    return True


def drain(
    consumer: KafkaConsumer, *, timeout_s: float = 10.0, min_records: int | None = None
) -> list[ConsumerRecord]:
    """Poll until ``min_records`` arrived (if given) or else until caught up with the high watermark.

    Returns what arrived by then, possibly fewer records after ``timeout_s``: a read_committed consumer facing
    an open transaction never catches up, which is what a test of "not visible yet" waits out.
    """
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=100).values():
            records.extend(batch)
        done = len(records) >= min_records if min_records is not None else caught_up(consumer)
        if done:
            break
    return records


def read_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    isolation_level: Isolation = "read_committed",
    timeout_s: float = 10.0,
    min_records: int | None = None,
) -> list[ConsumerRecord]:
    """Read ``topic`` from the beginning with a fresh assigned consumer (see ``drain``), then close it."""
    consumer = assigned_consumer(bootstrap_servers, topic, isolation_level)
    try:
        return drain(consumer, timeout_s=timeout_s, min_records=min_records)
    finally:
        consumer.close()
