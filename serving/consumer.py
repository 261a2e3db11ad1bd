"""Reading the delta topic: a small source interface, its kafka-python implementation, and the apply loop.

``DeltaSource`` is all the replica needs from a Kafka client (assign every partition, seek, poll, positions,
the readable end of each partition), so another client can be swapped in behind it
(``serving.confluent_source`` is one, chosen with ``--kafka-client confluent-kafka``). ``DeltaConsumer`` is the
background thread that polls a source and hands each batch to the replica; it never stops on bad data (the
replica counts and skips it) and reconnects with backoff when the broker is unreachable.

Readiness is "caught up to the readable end on every partition", with the end taken from fetch responses,
never from ``end_offsets``/"latest" (wrong on the embedded broker, see DESIGN.md). For a read_committed
consumer the readable end is the *last stable offset*: while a producer's transaction is open, the high
watermark is beyond it and a read_committed consumer can never reach it (Flink's exactly-once sink keeps a
transaction open between checkpoints almost all the time). kafka-python keeps only the high watermark, so
``KafkaDeltaSource`` also records the last stable offset of each fetch response; where that is not possible
it falls back to the high watermark.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from serving.metrics import ReplicaMetrics
from serving.progress import ReplayProgress

log = logging.getLogger(__name__)


class SourceRecord(NamedTuple):
    partition: int
    offset: int
    value: bytes | None


class PolledBatch:
    """The records of one poll as the apply path wants them: columns (values, partitions, offsets) in the
    order read, holding no client object.

    No Python object is built per record, and none of the client's survives the poll: at a replay's rate
    (10^5-10^6 records/s) building one costs about as much as decoding and applying the delta, and keeping
    10^5 of them alive past the poll makes the cyclic collector walk them (see ``gc_paused``).
    """

    __slots__ = ("offsets", "partitions", "prepared", "values")

    def __init__(self, values: list[bytes | None], partitions: list[int], offsets: list[int]) -> None:
        self.values = values
        self.partitions = partitions
        self.offsets = offsets
        #: what the batch handler computed from it ahead of handling it (``serving.readahead``), if anything
        self.prepared: Any = None

    @classmethod
    def of_records(cls, records: Sequence[SourceRecord]) -> PolledBatch:
        """A batch of explicit records (in-memory sources, tests)."""
        return cls([r.value for r in records], [r.partition for r in records], [r.offset for r in records])

    def __len__(self) -> int:
        return len(self.values)

    def partition(self, i: int) -> int:
        """The partition ``values[i]`` was read from."""
        return self.partitions[i]

    def records(self) -> list[SourceRecord]:
        """One ``SourceRecord`` per value (for tests and logs; the apply path never asks)."""
        return [SourceRecord(*r) for r in zip(self.partitions, self.offsets, self.values, strict=True)]


EMPTY_BATCH = PolledBatch([], [], [])


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a poll builds its ~10^5 message objects.

    Each poll's messages all survive until the batch is built, so the collector would run over and over
    and then walk the whole heap (torch, the app): measured, a bare confluent-kafka loop spent 2.1 s of
    CPU per 1M messages with it and 0.6 s without. The messages form no cycles; reference counting
    frees them. The previous state is restored, so two consumers in one process leave it enabled.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class TopicNotFoundError(Exception):
    """The delta topic does not exist (yet); the consumer retries."""


class DeltaSource(Protocol):
    """What the apply loop needs from a Kafka client."""

    def open(self, offsets: Mapping[int, int]) -> list[int]:
        """Assign every partition of the topic and seek to ``offsets`` (missing: the beginning)."""
        ...

    def poll(self, max_records: int, timeout_ms: int) -> PolledBatch: ...

    def position(self, partition: int) -> int:
        """Next offset this source will return for ``partition`` (past control records too)."""
        ...

    def end_offset(self, partition: int) -> int | None:
        """The readable end of ``partition`` from the latest fetch, or ``None`` before the first one."""
        ...

    def close(self) -> None: ...


class KafkaDeltaSource:
    """``DeltaSource`` over kafka-python: no consumer group (``assign``), read_committed, no auto commit.

    Offsets are never committed to Kafka: the replica's offsets live in its snapshots, next to the
    tensors they describe, which is what makes a snapshot a consistent cut.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_id: str = "freshet-replica",
        max_poll_records: int = 5000,
        **config: Any,
    ) -> None:
        self.topic = topic
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers.split(","),
            "client_id": client_id,
            "group_id": None,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            "auto_offset_reset": "earliest",
            "max_poll_records": max_poll_records,
            "fetch_max_wait_ms": 100,
            "max_partition_fetch_bytes": 8 << 20,
            **config,
        }
        self._consumer: Any = None
        self._tps: dict[int, Any] = {}
        self._stable_end: dict[int, int] = {}

    def open(self, offsets: Mapping[int, int]) -> list[int]:
        from kafka import KafkaConsumer, TopicPartition

        self._consumer = KafkaConsumer(**self._config)
        partitions = sorted(self._consumer.partitions_for_topic(self.topic))
        if not partitions:
            self.close()
            raise TopicNotFoundError(f"topic {self.topic!r} has no partitions (not created yet?)")
        self._tps = {p: TopicPartition(self.topic, p) for p in partitions}
        self._consumer.assign(list(self._tps.values()))
        for p, tp in self._tps.items():
            if p in offsets:
                self._consumer.seek(tp, int(offsets[p]))
            else:
                self._consumer.seek_to_beginning(tp)
        self._record_stable_offsets()
        return partitions

    def _record_stable_offsets(self) -> None:
        """Wrap the fetcher's response parsing to keep each partition's last stable offset."""
        fetcher: Any = getattr(self._consumer, "_fetcher", None)
        parse = getattr(fetcher, "_parse_fetched_data", None)
        if parse is None:
            log.warning("kafka-python internals changed; readiness falls back to the high watermark")
            return
        stable_end = self._stable_end

        def parse_and_record(completed_fetch: Any) -> Any:
            lso = getattr(completed_fetch.partition_data, "last_stable_offset", -1)
            if lso is not None and lso >= 0 and completed_fetch.topic_partition.topic == self.topic:
                stable_end[completed_fetch.topic_partition.partition] = int(lso)
            return parse(completed_fetch)

        fetcher._parse_fetched_data = parse_and_record

    def poll(self, max_records: int, timeout_ms: int) -> PolledBatch:
        with gc_paused():  # what is already fetched: building its records is the costly part
            batch = self._batch(self._consumer.poll(timeout_ms=0, max_records=max_records))
        if len(batch):
            return batch
        # nothing yet: wait for it with the collector running (a caught-up replica spends its time here)
        got = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        with gc_paused():
            batch = self._batch(got)
            del got  # its records die here, not once the collector is back
        return batch

    def _batch(self, got: Mapping[Any, list[Any]]) -> PolledBatch:
        """One ``PolledBatch`` of kafka-python's ``{partition: [record, ...]}``, in that order."""
        if not got:
            return EMPTY_BATCH
        values: list[bytes | None] = []
        partitions: list[int] = []
        offsets: list[int] = []
        for tp, run in got.items():
            values += [m.value for m in run]
            partitions += [tp.partition] * len(run)
            offsets += [m.offset for m in run]
        return PolledBatch(values, partitions, offsets)

    def position(self, partition: int) -> int:
        return int(self._consumer.position(self._tps[partition]))

    def end_offset(self, partition: int) -> int | None:
        highwater = self._consumer.highwater(self._tps[partition])
        if highwater is None:
            return None
        stable = self._stable_end.get(partition)
        return int(highwater) if stable is None else min(stable, int(highwater))

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            finally:
                self._consumer = None


#: ``on_batch(batch, positions)``: apply ``batch`` and record ``positions`` as the applied offsets
BatchHandler = Callable[[PolledBatch, Mapping[int, int]], None]


class DeltaConsumer:
    """The background apply loop: poll, hand over, track lag and readiness; reconnect on errors."""

    def __init__(
        self,
        source_factory: Callable[[], DeltaSource],
        on_batch: BatchHandler,
        start_offsets: Callable[[], Mapping[int, int]],
        metrics: ReplicaMetrics,
        *,
        batch_size: int = 5000,
        replay_batch_size: int | None = None,
        ready_max_lag: int = 10_000,
        poll_timeout_ms: int = 200,
        name: str = "replica",
    ) -> None:
        self._source_factory = source_factory
        self._on_batch = on_batch
        self._start_offsets = start_offsets
        self._metrics = metrics
        self._batch_size = batch_size
        self._replay_batch_size = max(batch_size, replay_batch_size or batch_size)
        self._ready_max_lag = ready_max_lag
        self._poll_timeout_ms = poll_timeout_ms
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: DeltaSource | None = None
        self._partitions: list[int] = []
        self._progress: ReplayProgress | None = None
        self.caught_up_once = threading.Event()
        self.lag: dict[int, int | None] = {}
        self.last_error: str | None = None

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("consumer already started")
        self._thread = threading.Thread(target=self._run, name=f"freshet-consumer-{self._name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("consumer thread did not stop within %.1f s", timeout_s)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # readiness -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Caught up once (every partition at its readable end), and since then within ``ready_max_lag``."""
        if not self.caught_up_once.is_set():
            return False
        lags = list(self.lag.values())
        return all(v is not None for v in lags) and sum(v or 0 for v in lags) <= self._ready_max_lag

    def total_lag(self) -> int | None:
        lags = list(self.lag.values())
        return None if not lags or any(v is None for v in lags) else sum(v or 0 for v in lags)

    # the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff_s = 0.1
        while not self._stop.is_set():
            try:
                if self._source is None:
                    self._connect()
                self._step()
                backoff_s = 0.1
            except TopicNotFoundError as exc:
                self._on_error("topic_missing", exc, log_level=logging.INFO)
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
            except Exception as exc:  # the broker, the network, the client: log, back off, reconnect
                self._on_error(type(exc).__name__, exc, log_level=logging.WARNING)
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
        self._close_source()
        if self._progress is not None:
            self._progress.close()

    def _connect(self) -> None:
        source = self._source_factory()
        offsets = dict(self._start_offsets())
        self._partitions = source.open(offsets)
        self._source = source
        # keep the last known lag across a reconnect: a broker blip must not take every replica out of service
        self.lag = {p: self.lag.get(p) for p in self._partitions}
        log.info(
            "consuming %d partitions from offsets %s",
            len(self._partitions),
            {p: offsets.get(p, "beginning") for p in self._partitions},
        )
        if not self.caught_up_once.is_set() and self._progress is None:
            self._progress = ReplayProgress(f"replaying deltas ({self._name})", offsets)

    def batch_size(self) -> int:
        """Records to poll and apply at once: large while not ready (a replay: per-batch costs amortize over
        ~100k deltas), small once ready (a batch becomes visible only once applied whole: freshness)."""
        return self._batch_size if self.ready else self._replay_batch_size

    def _step(self) -> None:
        assert self._source is not None
        batch = self._source.poll(self.batch_size(), self._poll_timeout_ms)
        positions = {p: self._source.position(p) for p in self._partitions}
        try:
            self._on_batch(batch, positions)
        except Exception:
            # the replica counts bad data itself; reaching here is a bug: skip the batch, keep serving
            log.exception("applying a batch of %d records failed; skipped", len(batch))
            self._metrics.consumer_errors.labels(kind="apply_failure").inc()
        self._update_lag(positions)
        self.last_error = None

    def _update_lag(self, positions: Mapping[int, int]) -> None:
        assert self._source is not None
        ends: dict[int, int | None] = {}
        for p in self._partitions:
            end = self._source.end_offset(p)
            ends[p] = end
            self.lag[p] = None if end is None else max(0, end - positions[p])
            if end is not None:
                self._metrics.lag.labels(partition=str(p)).set(self.lag[p] or 0)
        if self.caught_up_once.is_set():
            return
        if self._progress is not None:
            self._progress.update(positions, ends)
        if all(v == 0 for v in self.lag.values()):
            self.caught_up_once.set()
            if self._progress is not None:
                self._progress.close()
                self._progress = None
            log.info("caught up on %d partitions at offsets %s: ready", len(positions), dict(positions))

    def _on_error(self, kind: str, exc: Exception, *, log_level: int) -> None:
        message = f"{kind}: {exc}"
        if message != self.last_error:
            log.log(log_level, "delta source: %s (retrying)", message)
        self.last_error = message
        self._metrics.consumer_errors.labels(kind=kind).inc()
        self._close_source()

    def _close_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            try:
                source.close()
            except Exception as exc:
                log.debug("closing the delta source: %s", exc)
