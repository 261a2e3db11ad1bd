"""The replica's delta sources and apply loop against the embedded broker (no model involved).

Every test runs with each client library behind ``DeltaSource``: kafka-python and confluent-kafka.
"""

from __future__ import annotations

import gc
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest
from kafka import KafkaProducer

from serving.confluent_source import ConfluentDeltaSource
from serving.consumer import DeltaConsumer, DeltaSource, KafkaDeltaSource, PolledBatch, SourceRecord
from serving.metrics import ReplicaMetrics
from serving.readahead import ReadAheadSource
from serving.testing import wait_until

pytestmark = pytest.mark.kafka

#: client -> (bootstrap, topic, fail fast: an unreachable broker must surface as an error) -> a source
SOURCES: dict[str, Callable[..., DeltaSource]] = {
    "kafka-python": lambda bootstrap, topic, fail_fast=False: KafkaDeltaSource(
        bootstrap,
        topic,
        **({"request_timeout_ms": 500, "api_version_auto_timeout_ms": 500} if fail_fast else {}),
    ),
    "confluent-kafka": lambda bootstrap, topic, fail_fast=False: ConfluentDeltaSource(
        bootstrap, topic, **({"metadata_timeout_s": 0.5} if fail_fast else {})
    ),
}
# what a replica uses by default: each client read one batch ahead (``serving.readahead``)
SOURCES |= {
    f"{name}, read ahead": lambda bootstrap, topic, fail_fast=False, make=make: ReadAheadSource(
        make(bootstrap, topic, fail_fast)
    )
    for name, make in list(SOURCES.items())
}


@pytest.fixture(params=sorted(SOURCES))
def make_source(request: pytest.FixtureRequest) -> Callable[..., DeltaSource]:
    """``make_source(bootstrap, topic, fail_fast=False)`` of one client library (the test runs with each)."""
    return SOURCES[request.param]


class Recorder:
    """A batch handler that keeps what it was given (and can be told to fail once)."""

    def __init__(self, fail_first: bool = False) -> None:
        self.records: list[SourceRecord] = []
        self.positions: dict[int, int] = {}
        self.fail_next = fail_first
        self.lock = threading.Lock()

    def __call__(self, batch: PolledBatch, positions: Mapping[int, int]) -> None:
        if self.fail_next and len(batch):
            self.fail_next = False
            raise RuntimeError("a bug in the handler")
        with self.lock:
            self.records.extend(batch.records())
            self.positions.update(positions)

    def values(self) -> list[bytes | None]:
        with self.lock:
            return [r.value for r in self.records]


def _consumer(
    make_source: Callable[..., DeltaSource],
    bootstrap: str,
    topic: str,
    handler: Recorder,
    metrics: ReplicaMetrics,
    start: Mapping[int, int] | None = None,
) -> DeltaConsumer:
    return DeltaConsumer(lambda: make_source(bootstrap, topic), handler, lambda: dict(start or {}), metrics,
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


def test_ready_at_the_last_stable_offset_while_a_transaction_is_open(
    broker, make_topic, producer, make_source
) -> None:
    """An open transaction (Flink's sink keeps one open between checkpoints) must not hold readiness hostage,
    and its records stay invisible until it commits."""
    topic = make_topic(partitions=2)
    _send_txn(producer, topic, [b"a", b"b", b"c"], partition=0)
    _send_txn(producer, topic, [b"open1", b"open2"], partition=0, commit=False)
    handler, metrics = Recorder(), ReplicaMetrics()
    consumer = _consumer(make_source, broker.bootstrap_servers, topic, handler, metrics)
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


def test_starts_from_the_given_offsets(broker, make_topic, producer, make_source) -> None:
    topic = make_topic(partitions=1)
    _send_txn(producer, topic, [b"0", b"1", b"2", b"3"], partition=0)
    handler = Recorder()
    consumer = _consumer(
        make_source, broker.bootstrap_servers, topic, handler, ReplicaMetrics(), start={0: 2}
    )
    consumer.start()
    try:
        wait_until(lambda: consumer.ready, what="ready")
        assert handler.values() == [b"2", b"3"]
        assert [r.offset for r in handler.records] == [2, 3]
    finally:
        consumer.stop()


def test_a_failing_batch_is_counted_and_the_stream_goes_on(broker, make_topic, producer, make_source) -> None:
    topic = make_topic(partitions=1)
    handler, metrics = Recorder(fail_first=True), ReplicaMetrics()
    consumer = _consumer(make_source, broker.bootstrap_servers, topic, handler, metrics)
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


def test_not_ready_while_the_broker_is_unreachable(make_source) -> None:
    handler, metrics = Recorder(), ReplicaMetrics()
    consumer = DeltaConsumer(
        lambda: make_source("127.0.0.1:9", "nowhere", fail_fast=True),
        handler,
        dict,
        metrics,
        poll_timeout_ms=50,
    )
    consumer.start()
    try:
        wait_until(lambda: consumer.last_error, what="an error recorded", timeout_s=30)
        assert not consumer.ready and consumer.running
    finally:
        consumer.stop()


def test_offsets_tracked_per_partition(broker, make_topic, make_source) -> None:
    """Every record arrives once, in offset order per partition; positions end at each partition's end."""
    import kafka_helpers

    topic = make_topic(partitions=3)
    sent = [(str(i % 11).encode(), f"v{i}".encode()) for i in range(60)]
    partitions = kafka_helpers.produce(broker.bootstrap_servers, topic, sent)
    handler = Recorder()
    consumer = _consumer(make_source, broker.bootstrap_servers, topic, handler, ReplicaMetrics())
    consumer.start()
    try:
        wait_until(lambda: consumer.ready, what="ready")
    finally:
        consumer.stop()
    per_partition = {p: [v for (_, v), q in zip(sent, partitions, strict=True) if q == p] for p in range(3)}
    for p, values in per_partition.items():
        got = [r for r in handler.records if r.partition == p]
        assert [r.value for r in got] == values
        assert [r.offset for r in got] == list(range(len(values)))
    assert handler.positions == {p: len(v) for p, v in per_partition.items()}
    assert consumer.lag == dict.fromkeys(range(3), 0)


def test_not_ready_before_reaching_the_end_of_a_backlog(broker, make_topic, producer, make_source) -> None:
    """Readiness waits for the whole backlog: a handler that holds each batch keeps the replica not ready."""
    topic = make_topic(partitions=1)
    _send_txn(producer, topic, [str(i).encode() for i in range(500)], partition=0)
    release, handler = threading.Event(), Recorder()

    def slow(batch: PolledBatch, positions: Mapping[int, int]) -> None:
        handler(batch, positions)
        if len(handler.records) >= 100:
            release.wait(10)

    consumer = DeltaConsumer(lambda: make_source(broker.bootstrap_servers, topic), slow, dict, ReplicaMetrics(),
                             batch_size=50, poll_timeout_ms=100, name="test")  # fmt: skip
    consumer.start()
    try:
        wait_until(lambda: len(handler.records) >= 100, what="the first batches")
        assert not consumer.ready and not consumer.caught_up_once.is_set()
        assert 0 < len(handler.records) < 500
        release.set()
        wait_until(lambda: consumer.ready, what="ready after the backlog")
        assert len(handler.records) == 500 and handler.positions == {0: 501}
    finally:
        release.set()
        consumer.stop()


def test_both_clients_read_the_same_committed_records(broker, make_topic, producer) -> None:
    """The same topic through each client: identical (partition, offset, value) sequences and end positions."""
    topic = make_topic(partitions=2)
    for i in range(5):
        _send_txn(producer, topic, [f"{i}-{j}".encode() for j in range(7)], partition=i % 2)
    seen = {}
    for name, make in SOURCES.items():
        handler = Recorder()
        consumer = _consumer(make, broker.bootstrap_servers, topic, handler, ReplicaMetrics(), start={1: 3})
        consumer.start()
        try:
            wait_until(lambda c=consumer: c.ready, what=f"{name} ready")  # type: ignore[misc]
        finally:
            consumer.stop()
        # partitions may interleave differently; within one, the order is the log's
        by_partition = {p: [(r.offset, r.value) for r in handler.records if r.partition == p] for p in (0, 1)}
        seen[name] = (by_partition, dict(handler.positions))
    assert all(got == seen["kafka-python"] for got in seen.values()), seen
    records, positions = seen["kafka-python"]
    assert [len(records[0]), len(records[1])] == [3 * 7, 2 * 7 - 3] and positions == {0: 24, 1: 16}
    assert records[1][0] == (3, b"1-3")


def test_replays_in_large_batches_then_applies_small_ones_once_ready(
    broker, make_topic, producer, make_source
) -> None:
    """While not ready, batches up to ``replay_batch_size`` (throughput); once ready, up to ``batch_size``
    (a batch becomes visible whole, so a small one keeps deltas fresh)."""
    topic = make_topic(partitions=1)
    _send_txn(producer, topic, [str(i).encode() for i in range(3000)], partition=0)
    sizes: list[tuple[bool, int]] = []
    handler = Recorder()
    consumer: DeltaConsumer

    def record_sizes(batch: PolledBatch, positions: Mapping[int, int]) -> None:
        handler(batch, positions)
        if len(batch):
            sizes.append((consumer.ready, len(batch)))

    consumer = DeltaConsumer(lambda: make_source(broker.bootstrap_servers, topic), record_sizes, dict,
                             ReplicaMetrics(), batch_size=10, replay_batch_size=1000, poll_timeout_ms=100,
                             name="test")  # fmt: skip
    assert consumer.batch_size() == 1000, "not ready yet: a replay"
    consumer.start()
    try:
        wait_until(lambda: consumer.ready, what="ready after the backlog")
        assert consumer.batch_size() == 10
        _send_txn(producer, topic, [str(i).encode() for i in range(200)], partition=0)
        wait_until(lambda: len(handler.records) == 3200, what="the records sent once ready")
    finally:
        consumer.stop()
    replay = [n for ready, n in sizes if not ready]
    live = [n for ready, n in sizes if ready]
    assert sum(replay) == 3000 and max(replay) > 10 and max(replay) <= 1000, replay
    assert sum(live) == 200 and max(live) <= 10, live
    assert gc.isenabled(), "polls pause the cyclic collector only while they build a batch"


class CountingListSource:
    """One partition held in memory, counting the polls made on it (no broker: the read-ahead's bookkeeping)."""

    def __init__(self, n: int) -> None:
        self.values, self.next, self.polls = [str(i).encode() for i in range(n)], 0, 0

    def open(self, offsets: Mapping[int, int]) -> list[int]:
        self.next = offsets.get(0, 0)
        return [0]

    def poll(self, max_records: int, timeout_ms: int) -> PolledBatch:
        chunk = self.values[self.next : self.next + max_records]
        batch = PolledBatch(list(chunk), [0] * len(chunk), list(range(self.next, self.next + len(chunk))))
        self.next += len(chunk)
        self.polls += 1
        return batch

    def position(self, partition: int) -> int:
        return self.next

    def end_offset(self, partition: int) -> int | None:
        return len(self.values)

    def close(self) -> None:
        pass


def test_read_ahead_reports_the_position_of_the_batch_it_returned() -> None:
    """The next batch is polled early, but offsets recorded with a batch must be that batch's own."""
    inner = CountingListSource(300)
    source = ReadAheadSource(inner)
    assert source.open({}) == [0] and source.position(0) == 0
    try:
        first = source.poll(100, 1000)
        assert first.values == [str(i).encode() for i in range(100)]
        wait_until(lambda: inner.polls >= 2, what="the next batch polled ahead")
        assert inner.next >= 200 and source.position(0) == 100, "the position of the batch returned"
        # polled ahead as 100 records; asked for 10 now (ready: small batches), it hands them out in parts
        part = source.poll(10, 1000)
        assert part.offsets == list(range(100, 110)) and source.position(0) == 110
        assert source.poll(10, 1000).offsets == list(range(110, 120)) and source.position(0) == 120
        rest = source.poll(1000, 1000)
        assert rest.offsets == list(range(120, 200)) and source.position(0) == 200
        assert source.end_offset(0) == 300
    finally:
        source.close()


def test_read_ahead_raises_the_inner_error_on_the_next_poll() -> None:
    inner = CountingListSource(10)

    def broken(max_records: int, timeout_ms: int) -> PolledBatch:
        raise ConnectionError("broker gone")

    inner.poll = broken  # type: ignore[method-assign]
    source = ReadAheadSource(inner)
    source.open({})
    try:
        with pytest.raises(ConnectionError, match="broker gone"):
            for _ in range(20):  # the first polls may time out before the reading thread has failed
                source.poll(10, 100)
    finally:
        source.close()


def test_read_ahead_prepares_each_batch_in_its_thread_and_survives_a_failing_prepare() -> None:
    """The replica decodes a batch while the previous one is applied; a failure there only means the
    batch is decoded when handled (``prepared`` is None), never a lost batch."""
    threads: list[str] = []

    def prepare(batch: PolledBatch) -> None:
        threads.append(threading.current_thread().name)
        if batch.offsets[0] == 100:
            raise ValueError("a bug in prepare")
        batch.prepared = len(batch)

    source = ReadAheadSource(CountingListSource(300), prepare=prepare)
    source.open({})
    try:
        batches = [source.poll(100, 1000) for _ in range(3)]
    finally:
        source.close()
    assert [b.offsets[0] for b in batches] == [0, 100, 200]
    assert [b.prepared for b in batches] == [100, None, 100]
    assert set(threads) == {"freshet-read-ahead"}
