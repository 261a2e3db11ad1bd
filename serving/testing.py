"""Helpers for testing a replica end to end: build deltas, produce them as the Flink sink does, wait.

Used by ``tests/test_serving_*.py`` and the benchmarks; not imported by the replica itself.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from freshet.bits import bloom_positions, words_from_positions
from freshet.deltas import Delta, DeltaKind, encode_delta, encode_key
from freshet.layout import REGION_ELIGIBILITY, REGION_EMBEDDING, TensorLayout
from freshet.versions import eligibility_version, embedding_version, feature_version, tombstone_version

T = TypeVar("T")


def embedding_delta(item_id: int, values: npt.ArrayLike, *, publish_ms: int, model_version: int = 0) -> Delta:
    return Delta(
        DeltaKind.EMBEDDING,
        item_id,
        REGION_EMBEDDING,
        embedding_version(publish_ms),
        publish_ms,
        np.asarray(values, dtype=np.float32),
        model_version,
    )


def feature_delta(
    layout: TensorLayout, item_id: int, name: str, value: float, *, window_end_ms: int, firing: int = 0
) -> Delta:
    return Delta(
        DeltaKind.FEATURE,
        item_id,
        layout.feature_region(name),
        feature_version(window_end_ms, firing),
        window_end_ms,
        np.asarray([value], dtype=np.float32),
    )


def eligibility_words(
    layout: TensorLayout, bits: Iterable[str] = (), bloom: Mapping[str, Iterable[str]] | None = None
) -> npt.NDArray[np.int64]:
    positions = [layout.bit(b).position for b in bits]
    for field, values in (bloom or {}).items():
        for value in values:
            positions += bloom_positions(layout.bloom(field), value)
    return words_from_positions(positions, layout.eligibility_words)


def eligibility_delta(
    layout: TensorLayout,
    item_id: int,
    *,
    change_ms: int,
    bits: Iterable[str] = (),
    bloom: Mapping[str, Iterable[str]] | None = None,
) -> Delta:
    return Delta(
        DeltaKind.ELIGIBILITY,
        item_id,
        REGION_ELIGIBILITY,
        eligibility_version(change_ms),
        change_ms,
        eligibility_words(layout, bits, bloom),
    )


def tombstone_delta(item_id: int, *, delete_ms: int) -> Delta:
    return Delta(
        DeltaKind.TOMBSTONE,
        item_id,
        0,
        tombstone_version(delete_ms),
        delete_ms,
        np.zeros(0, dtype=np.float32),
    )


REGIONS = ("PT", "BR", "US", "DE", "JP")
LANGUAGES = ("pt", "en", "de", "ja")


def random_deltas(layout: TensorLayout, rng: random.Random, n: int, *, items: int = 60,
                  t0_ms: int = 1_700_000_000_000) -> list[Delta]:  # fmt: skip
    """A plausible stream: every kind, re-publishes, late firings, deletes, in no particular order.

    A delta's value is a function of its item, kind and version, as the contract promises, so a
    redelivered or re-emitted delta carries the same value.
    """
    out = []
    for _ in range(n):
        item, t = rng.randrange(items), t0_ms + rng.randrange(10_000) * 1000
        kind = rng.choices(["embedding", "feature", "eligibility", "tombstone"], weights=[4, 6, 3, 1])[0]
        seed = np.random.default_rng([item, t, len(kind)])
        if kind == "embedding":
            out.append(embedding_delta(item, seed.normal(size=layout.embedding_dim), publish_ms=t))
        elif kind == "feature" and layout.feature_columns:
            column, firing = rng.choice(layout.feature_columns), rng.randrange(3)
            value = float(seed.integers(100)) + firing + column.index
            out.append(feature_delta(layout, item, column.name, value, window_end_ms=t, firing=firing))
        elif kind == "eligibility":
            bits = [b.name for b in layout.exact_bits if seed.random() < 0.5]
            bloom = {f.name: [rng.choice(REGIONS + LANGUAGES)] for f in layout.bloom_fields}
            out.append(eligibility_delta(layout, item, change_ms=t, bits=bits, bloom=bloom))
        else:
            out.append(tombstone_delta(item, delete_ms=t))
    return out


class DeltaProducer:
    """Writes deltas keyed by item id, each ``send`` one Kafka transaction (like Flink's exactly-once sink)."""

    def __init__(
        self, bootstrap_servers: str, topic: str, layout: TensorLayout, *, transactional: bool = True
    ) -> None:
        from kafka import KafkaProducer

        self.topic, self.layout = topic, layout
        config: dict[str, Any] = {"bootstrap_servers": bootstrap_servers, "acks": "all", "linger_ms": 2}
        if transactional:
            config["transactional_id"] = f"freshet-test-{uuid.uuid4().hex[:10]}"
        self._producer = KafkaProducer(**config)
        self.transactional = transactional
        #: partition (as a string, like ``/v1/state``) -> 1 + the offset of the last record sent there
        self.next_offsets: dict[str, int] = {}
        if transactional:
            self._producer.init_transactions()

    def send(self, deltas: Iterable[Delta], *, commit: bool = True) -> None:
        """Send ``deltas`` in one transaction, then commit it (or abort it with ``commit=False``)."""
        self.send_raw(((encode_key(d.item_id), encode_delta(d, self.layout)) for d in deltas), commit=commit)

    def send_raw(self, records: Iterable[tuple[bytes | None, bytes | None]], *, commit: bool = True) -> None:
        if self.transactional:
            self._producer.begin_transaction()
        futures = [self._producer.send(self.topic, key=key, value=value) for key, value in records]
        self._producer.flush()
        self._note_offsets(futures)
        if not self.transactional:
            return
        if commit:
            self._producer.commit_transaction()
        else:
            self._producer.abort_transaction()

    def _note_offsets(self, futures: list[Any]) -> None:
        for future in futures:
            metadata = future.get(timeout=10)
            key = str(metadata.partition)
            self.next_offsets[key] = max(self.next_offsets.get(key, 0), metadata.offset + 1)

    def close(self) -> None:
        self._producer.close()

    def __enter__(self) -> DeltaProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_in_transactions(producer: DeltaProducer, deltas: list[Delta], rng: random.Random) -> None:
    """Transactions of random size; some are first sent and aborted (as a failed Flink checkpoint leaves them)."""
    i = 0
    while i < len(deltas):
        chunk = deltas[i : i + rng.randrange(1, 40)]
        if rng.random() < 0.2:
            producer.send(chunk, commit=False)
        producer.send(chunk)
        i += len(chunk)


def wait_until(
    predicate: Callable[[], T], *, timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s (last value: {value!r})")
        time.sleep(interval_s)
