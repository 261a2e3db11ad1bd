"""The replica's delta source and apply loop against the embedded broker (no model involved)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence

import pytest
from kafka import KafkaProducer

from serving.consumer import DeltaConsumer, KafkaDeltaSource, SourceRecord
from serving.metrics import ReplicaMetrics
from serving.testing import wait_until

pytestmark = pytest.mark.kafka


class Recorder:
    """A batch handler that keeps what it was given (and can be told to fail once)."""

    def __init__(self, fail_first: bool = False) -> None:
        self.records: list[SourceRecord] = []
        self.positions: dict[int, int] = {}
        self.fail_next = fail_first
        self.lock = threading.Lock()

    def __call__(self, records: Sequence[SourceRecord], positions: Mapping[int, int]) -> None:
        if self.fail_next and records:
            self.fail_next = False
            raise RuntimeError("a bug in the handler")
        with self.lock:
            self.records.extend(records)
            self.positions.update(positions)

    def values(self) -> list[bytes | None]:
        with self.lock:
            return [r.value for r in self.records]


def _consumer(
    bootstrap: str,
    topic: str,
    handler: Recorder,
    metrics: ReplicaMetrics,
    start: Mapping[int, int] | None = None,
) -> DeltaConsumer:
    return DeltaConsumer(lambda: KafkaDeltaSource(bootstrap, topic), handler, lambda: dict(start or {}), metrics,
                         batch_size=100, poll_timeout_ms=100, name="test")  # fmt: skip


@pytest.fixture
def producer(broker) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, transactional_id=f"t-{uuid.uuid4().hex}")
    p.init_transactions()
    yield p
    p.close()


def _send_txn(
    producer: KafkaProducer, topic: str, values: Sequence[bytes], partition: int, commit: bool = True
) -> None:
    producer.begin_transaction()
    for v in values:
        producer.send(topic, key=b"k", value=v, partition=partition)
    producer.flush()
    if commit:
        producer.commit_transaction()


def test_ready_at_the_last_stable_offset_while_a_transaction_is_open(broker, make_topic, producer) -> None:
    """An open transaction (Flink's sink keeps one open between checkpoints) must not hold readiness hostage,
    and its records stay invisible until it commits."""
    topic = make_topic(partitions=2)
    _send_txn(producer, topic, [b"a", b"b", b"c"], partition=0)
    _send_txn(producer, topic, [b"open1", b"open2"], partition=0, commit=False)
    handler, metrics = Recorder(), ReplicaMetrics()
    consumer = _consumer(broker.bootstrap_servers, topic, handler, metrics)
    consumer.start()
    try:
        wait_until(lambda: consumer.ready, what="ready with a transaction open")
        assert handler.values() == [b"a", b"b", b"c"]
        assert consumer.lag == {0: 0, 1: 0}
        # position is past the commit marker of the first transaction
        assert handler.positions[0] == 4 and handler.positions[1] == 0
        producer.commit_transaction()
        wait_until(lambda: len(handler.values()) == 5, what="records of the committed transaction")
        assert handler.values()[3:] == [b"open1", b"open2"]
        wait_until(lambda: consumer.lag == {0: 0, 1: 0}, what="lag 0 after the commit")
    finally:
        consumer.stop()


def test_starts_from_the_given_offsets(broker, make_topic, producer) -> None:
    topic = make_topic(partitions=1)
    _send_txn(producer, topic, [b"0", b"1", b"2", b"3"], partition=0)
    handler = Recorder()
    consumer = _consumer(broker.bootstrap_servers, topic, handler, ReplicaMetrics(), start={0: 2})
    consumer.start()
    try:
        wait_until(lambda: consumer.ready, what="ready")
        assert handler.values() == [b"2", b"3"]
        assert [r.offset for r in handler.records] == [2, 3]
    finally:
        consumer.stop()


def test_a_failing_batch_is_counted_and_the_stream_goes_on(broker, make_topic, producer) -> None:
    topic = make_topic(partitions=1)
    handler, metrics = Recorder(fail_first=True), ReplicaMetrics()
    consumer = _consumer(broker.bootstrap_servers, topic, handler, metrics)
    consumer.start()
    try:
        wait_until(lambda: consumer.ready, what="ready on an empty topic")
        _send_txn(producer, topic, [b"poison"], partition=0)
        wait_until(lambda: metrics.registry.get_sample_value(
            "freshet_consumer_errors_total", {"kind": "apply_failure"}) == 1, what="the failure counted")  # fmt: skip
        _send_txn(producer, topic, [b"after"], partition=0)
        wait_until(lambda: handler.values() == [b"after"], what="the next batch applied")
        assert consumer.running
    finally:
        consumer.stop()
    assert not consumer.running


def test_not_ready_while_the_broker_is_unreachable() -> None:
    handler, metrics = Recorder(), ReplicaMetrics()
    consumer = DeltaConsumer(
        lambda: KafkaDeltaSource("127.0.0.1:9", "nowhere", request_timeout_ms=500, api_version_auto_timeout_ms=500),
        handler, dict, metrics, poll_timeout_ms=50,
    )  # fmt: skip
    consumer.start()
    try:
        wait_until(lambda: consumer.last_error, what="an error recorded", timeout_s=30)
        assert not consumer.ready and consumer.running
    finally:
        consumer.stop()
