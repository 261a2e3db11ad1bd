"""A ``DeltaSource`` that polls its inner source one batch ahead, in a thread of its own.

During a replay the apply loop alternates between the client building a batch of records and the replica
decoding and applying it; both are CPU work of similar size (confluent-kafka: ~0.6 and ~1.4 CPU s per 1M
deltas). librdkafka's fetching and numpy's and torch's larger operations run without the GIL, so polling
the next batch while the current one is applied puts the second core to use (and, on a shared machine,
gives the replay a second thread's share of the CPU).

What the apply loop sees stays consistent: ``position`` and ``end_offset`` are those the inner source
reported right after the poll that produced the batch last returned, so the offsets recorded with a batch
and the lag computed from them describe that batch, never one polled since. A batch polled ahead larger
than the caller asks for now (the replica became ready meanwhile) is handed out in parts of that size.
Only the reading thread touches the inner source between ``open`` and ``close``; an error there is raised
by the next ``poll``. ``prepare`` (the replica's decode) runs on each batch in the reading thread too, so
that the caller's thread is left with applying it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from serving.consumer import EMPTY_BATCH, DeltaSource, PolledBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Polled:
    batch: PolledBatch
    positions: dict[int, int]
    ends: dict[int, int | None]
    error: Exception | None = None


def _split(polled: _Polled, max_records: int) -> tuple[_Polled, _Polled | None]:
    """The first ``max_records`` records of ``polled`` and the rest (``None`` if nothing is left).

    A batch polled ahead was asked for with the size wanted then: once the replica is ready it wants small
    batches again (freshness), so a large one is handed out in parts. A part's position on a partition is
    the offset of that partition's next record in the rest, else the position after the whole batch.
    """
    batch = polled.batch
    if len(batch) <= max_records:
        return polled, None
    head = PolledBatch(
        batch.values[:max_records], batch.partitions[:max_records], batch.offsets[:max_records]
    )
    tail = PolledBatch(
        batch.values[max_records:], batch.partitions[max_records:], batch.offsets[max_records:]
    )
    next_offset = dict(zip(reversed(tail.partitions), reversed(tail.offsets), strict=True))
    head_positions = {p: next_offset.get(p, o) for p, o in polled.positions.items()}
    return _Polled(head, head_positions, polled.ends), _Polled(tail, polled.positions, polled.ends)


class ReadAheadSource:
    """``DeltaSource`` over ``inner``: one poll in flight while the caller applies the previous batch."""

    def __init__(self, inner: DeltaSource, *, prepare: Callable[[PolledBatch], None] | None = None) -> None:
        self._inner = inner
        self._prepare = prepare
        self._partitions: list[int] = []
        self._polled: queue.Queue[_Polled] = queue.Queue(maxsize=1)
        self._wanted = (1, 0)  # (max_records, timeout_ms) of the caller's latest poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: _Polled | None = None
        self._pending: _Polled | None = None  # the rest of a batch polled larger than the caller now wants

    @property
    def inner(self) -> DeltaSource:
        return self._inner

    def open(self, offsets: Mapping[int, int]) -> list[int]:
        self._partitions = self._inner.open(offsets)
        self._last = self._report(EMPTY_BATCH)
        return self._partitions

    def poll(self, max_records: int, timeout_ms: int) -> PolledBatch:
        self._wanted = (max_records, timeout_ms)
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name="freshet-read-ahead", daemon=True)
            self._thread.start()
        polled = self._pending
        if polled is None:
            try:
                polled = self._polled.get(timeout=timeout_ms / 1000)
            except queue.Empty:
                return EMPTY_BATCH
        if polled.error is not None:
            raise polled.error
        self._last, self._pending = _split(polled, max_records)
        return self._last.batch

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                polled = self._report(self._inner.poll(*self._wanted))
                self._prepare_ahead(polled.batch)
            except Exception as exc:  # raised to the apply loop, which closes this source and reconnects
                polled = _Polled(EMPTY_BATCH, {}, {}, exc)
            while not self._stop.is_set():
                try:
                    self._polled.put(polled, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if polled.error is not None:
                return

    def _prepare_ahead(self, batch: PolledBatch) -> None:
        """Let the handler start on ``batch`` here (the replica decodes it); on failure it does so itself."""
        if self._prepare is None or not len(batch):
            return
        try:
            self._prepare(batch)
        except Exception:
            log.exception(
                "preparing a batch of %d records ahead failed; it is prepared when handled", len(batch)
            )
            batch.prepared = None

    def _report(self, batch: PolledBatch) -> _Polled:
        inner = self._inner
        return _Polled(
            batch,
            {p: inner.position(p) for p in self._partitions},
            {p: inner.end_offset(p) for p in self._partitions},
        )

    def position(self, partition: int) -> int:
        assert self._last is not None, "open() first"
        return self._last.positions[partition]

    def end_offset(self, partition: int) -> int | None:
        assert self._last is not None, "open() first"
        return self._last.ends[partition]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._inner.close()
