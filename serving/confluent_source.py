"""``DeltaSource`` over confluent-kafka (librdkafka): the same contract as ``KafkaDeltaSource``, faster.

Chosen with ``--kafka-client confluent-kafka`` (``FRESHET_KAFKA_CLIENT``). librdkafka fetches and decodes
record batches in its own C threads, so the replica's Python thread only takes each message's value;
that is what makes a bootstrap replay several times faster than kafka-python's pure-Python fetcher.

* **No consumer group.** Partitions are ``assign``-ed at explicit offsets and nothing is ever committed: the
  replica's offsets live in its snapshots. librdkafka insists on a ``group.id`` even for assign-only
  consumers; it names this replica, and no group is ever joined (``subscribe`` is never called).
* **read_committed**, and the readable end of a partition is its *last stable offset*, learned two ways,
  both from fetch responses (never from ``end_offsets``/"latest", wrong on the embedded broker):
  partition-EOF events (librdkafka signals EOF at the last stable offset for read_committed consumers), and
  the ``ls_offset`` of each partition in librdkafka's periodic statistics. Where neither is known yet, or the
  position has moved past the last one seen, the cached fetch high watermark stands in: an upper bound, so
  readiness is never claimed early.
* **Positions** are tracked here (start offset, EOF), raised to librdkafka's own position (the last message
  handed out + 1, also past transaction markers); librdkafka reports none for a partition that returned
  nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from serving.consumer import EMPTY_BATCH, PolledBatch, TopicNotFoundError, gc_paused

log = logging.getLogger(__name__)

_INVALID = -1001  # librdkafka's RD_KAFKA_OFFSET_INVALID


class ConfluentDeltaSource:
    """``DeltaSource`` over confluent-kafka: assigned partitions, read_committed, no commits."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_id: str = "freshet-replica",
        metadata_timeout_s: float = 10.0,
        **config: Any,
    ) -> None:
        self.topic = topic
        self._metadata_timeout_s = metadata_timeout_s
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": client_id,
            "group.id": client_id,  # required by librdkafka; never joined, never committed to
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "statistics.interval.ms": 200,
            "stats_cb": self._on_stats,
            "fetch.wait.max.ms": 100,
            "max.partition.fetch.bytes": 8 << 20,
            # Prefetch a replay's backlog: librdkafka stops fetching a partition once its queue holds
            # queued.min.messages (default 100k) and then waits fetch.queue.backoff.ms (default 1 s), which
            # stalled a 1M-delta replay for ~1 s five times. The queue stays bounded by
            # queued.max.messages.kbytes (64 MB by default).
            "queued.min.messages": 1_000_000,
            "fetch.queue.backoff.ms": 20,
            "logger": logging.getLogger("serving.librdkafka"),  # librdkafka would write to stderr itself
            **config,
        }
        self._consumer: Any = None
        self._tps: dict[int, Any] = {}
        self._position: dict[int, int] = {}
        self._stable_end: dict[int, int] = {}

    def open(self, offsets: Mapping[int, int]) -> list[int]:
        """Assign every partition of the topic at ``offsets`` (missing: the partition's first offset)."""
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer(self._config)
        try:
            partitions = self._partitions()
            self._tps = {p: TopicPartition(self.topic, p) for p in partitions}
            self._position = {p: self._start_offset(p, offsets) for p in partitions}
        except BaseException:
            self.close()
            raise
        self._stable_end = {}
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in self._position.items()])
        return partitions

    def _partitions(self) -> list[int]:
        metadata = self._consumer.list_topics(self.topic, timeout=self._metadata_timeout_s)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = topic.error if topic is not None and topic.error is not None else "no partitions"
            raise TopicNotFoundError(f"topic {self.topic!r}: {reason} (not created yet?)")
        return sorted(topic.partitions)

    def _start_offset(self, partition: int, offsets: Mapping[int, int]) -> int:
        """The snapshot's offset, else the partition's low watermark (its first offset; not "latest")."""
        if partition in offsets:
            return int(offsets[partition])
        low, _ = self._consumer.get_watermark_offsets(
            self._tps[partition], timeout=self._metadata_timeout_s, cached=False
        )
        return max(0, int(low))

    def poll(self, max_records: int, timeout_ms: int) -> PolledBatch:
        """Up to ``max_records`` committed records; partition-EOF events only move the readable end.

        Waits (at most ``timeout_ms``) only for the first message, then takes what is already queued:
        ``consume(n, timeout)`` would wait out the whole timeout whenever fewer than ``n`` are queued.
        Positions come from librdkafka (the last message handed out + 1).
        """
        first = self._consumer.poll(timeout_ms / 1000)
        if first is None:
            self._raise_positions()
            return EMPTY_BATCH
        with gc_paused():
            return self._batch(
                [first, *self._consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]
            )

    def _batch(self, messages: list[Any]) -> PolledBatch:
        """The batch of ``messages``: events handled, positions raised, values taken."""
        events = [m for m in messages if m.error() is not None]
        if events:
            for m in events:
                self._on_event(m, m.error())
            messages = [m for m in messages if m.error() is None]
        self._raise_positions()
        return PolledBatch(
            [m.value() for m in messages], [m.partition() for m in messages], [m.offset() for m in messages]
        )

    def _on_event(self, message: Any, error: Any) -> None:
        from confluent_kafka import KafkaError, KafkaException

        if error.code() == KafkaError._PARTITION_EOF:
            p, end = message.partition(), int(message.offset())
            self._stable_end[p] = max(self._stable_end.get(p, end), end)
            self._position[p] = max(self._position.get(p, end), end)
        elif error.fatal():
            raise KafkaException(error)
        else:  # librdkafka retries these itself (a broker restarting, a timed-out request)
            log.warning("delta source (confluent-kafka): %s", error)

    def _raise_positions(self) -> None:
        for tp in self._consumer.position(list(self._tps.values())):
            if tp.offset != _INVALID and tp.offset > self._position.get(tp.partition, -1):
                self._position[tp.partition] = int(tp.offset)

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics (every ``statistics.interval.ms``): keep each partition's last stable offset."""
        partitions = json.loads(stats_json).get("topics", {}).get(self.topic, {}).get("partitions", {})
        for name, stats in partitions.items():
            lso = int(stats.get("ls_offset", _INVALID))
            if name != "-1" and lso >= 0:
                p = int(name)
                self._stable_end[p] = max(self._stable_end.get(p, lso), lso)

    def position(self, partition: int) -> int:
        return self._position[partition]

    def end_offset(self, partition: int) -> int | None:
        """The last stable offset seen in fetch responses; the high watermark where that is behind us."""
        stable = self._stable_end.get(partition)
        if stable is not None and stable >= self._position[partition]:
            return stable
        _, high = self._consumer.get_watermark_offsets(self._tps[partition], cached=True)
        return None if high is None or high < 0 else int(high)

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            finally:
                self._consumer = None
