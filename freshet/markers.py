"""Checkpoint markers on the delta topic, and which Flink checkpoint a replica's cut is aligned with.

The delta job's JVM operator ``dev.freshet.flink.CheckpointMarkerOperator`` sits right before the exactly-once
Kafka sink. Just before barrier N passes it, each of its subtasks emits one marker per delta-topic partition,
keyed so that Kafka's default partitioner puts it on that partition. A marker is therefore the last record its
subtask wrote to that partition before barrier N, inside the sink transaction that commits when checkpoint N
completes. Hence (DESIGN contract 6): once a replica has read checkpoint N's marker from every subtask on every
partition, its cut holds every delta emitted before barrier N, and on a correct broker checkpoint N completed.

A broker that shows records of aborted transactions (the embedded one does) could show the marker of a
checkpoint that never completed, so ``CheckpointAlignment.aligned`` names only a checkpoint that a caller-given
check confirms (the replica: its retained ``chk-N/_metadata`` exists).

Wire format (codec version 1, kind 5, 56 bytes, little-endian), written by ``CheckpointMarkerCodec.java``::

    offset  size  field
    0       2     magic b"FD"
    2       1     codec version (1)
    3       1     kind (5: MARKER_KIND)
    4       2     partition (u16): the partition this marker vouches for
    6       2     partition count (u16) of the delta topic when it was emitted
    8       8     checkpoint id (i64)
    16      4     subtask index (u32) of the marker operator
    20      4     subtask count (u32)
    24      32    Flink job id, ASCII hex
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from freshet.wire import CODEC_VERSION, MAGIC, MARKER_BYTES, MARKER_KIND

_STRUCT = struct.Struct("<2sBBHHqII32s")
assert _STRUCT.size == MARKER_BYTES


@dataclass(frozen=True)
class CheckpointMarker:
    job_id: str
    checkpoint_id: int
    subtask: int
    subtasks: int
    partition: int
    partitions: int


@dataclass(frozen=True)
class AlignedCheckpoint:
    """A completed Flink checkpoint that a cut includes: ``<checkpoint dir>/<job_id>/chk-<checkpoint_id>``."""

    job_id: str
    checkpoint_id: int

    @property
    def relative_path(self) -> str:
        """Where the checkpoint lies under the job's checkpoint directory.

        >>> AlignedCheckpoint("ab" * 16, 7).relative_path.endswith("/chk-7")
        True
        """
        return f"{self.job_id}/chk-{self.checkpoint_id}"


def encode_marker(marker: CheckpointMarker) -> bytes:
    """The record value of ``marker`` (what the JVM operator writes; Python writes it only in tests).

    >>> m = CheckpointMarker("0" * 32, 3, 0, 1, 2, 4)
    >>> decode_marker(encode_marker(m)) == m
    True
    """
    return _STRUCT.pack(MAGIC, CODEC_VERSION, MARKER_KIND, marker.partition, marker.partitions,
                        marker.checkpoint_id, marker.subtask, marker.subtasks, marker.job_id.encode("ascii"))  # fmt: skip


def is_marker(value: bytes | None) -> bool:
    """Whether a record value is a checkpoint marker (not a delta).

    >>> is_marker(b"FD" + bytes([1, 5]) + bytes(52)), is_marker(b"FD" + bytes([1, 1]) + bytes(52))
    (True, False)
    """
    return value is not None and len(value) == MARKER_BYTES and value[3] == MARKER_KIND and value[:3] == MAGIC + bytes([CODEC_VERSION])  # fmt: skip


def decode_marker(value: bytes) -> CheckpointMarker | None:
    """The marker in ``value``, or ``None`` if it is none or inconsistent (counted by the caller)."""
    if not is_marker(value):
        return None
    _, _, _, partition, partitions, checkpoint, subtask, subtasks, job = _STRUCT.unpack(value)
    try:
        job_id = job.decode("ascii")
        int(job_id, 16)
    except ValueError:
        return None
    if partition >= partitions or subtask >= subtasks or checkpoint < 0:
        return None
    return CheckpointMarker(job_id, checkpoint, subtask, subtasks, partition, partitions)


def marker_key(partition: int, partitions: int) -> bytes:
    """The key the JVM operator gives the marker of ``partition``: the first salt that hashes there.

    >>> [murmur2_partition(marker_key(p, 3), 3) for p in range(3)]
    [0, 1, 2]
    """
    salt = 0
    while True:
        key = f"~checkpoint-{partition}-{salt}".encode()
        if murmur2_partition(key, partitions) == partition:
            return key
        salt += 1


def murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition of a keyed record: ``toPositive(murmur2(key)) % partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as a signed int."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[length - length % 4 :]
    if tail:
        for i in reversed(range(len(tail))):
            h ^= tail[i] << (8 * i)
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


class CheckpointAlignment:
    """Which checkpoints the records read so far include, from the markers seen on each partition.

    ``observe`` is called with each marker and the partition it was read from, in read order; ``aligned``
    names the newest checkpoint that is *marker-complete* (checkpoint N's marker, or a later one, read from
    every subtask on every partition) and that ``exists`` confirms. Any marker-complete checkpoint is a
    valid alignment: the cut holds every delta emitted before its barrier, and the deltas after it that the
    cut also holds are re-emitted identically by a job restored from it (versioned, absolute deltas).
    """

    def __init__(self, initial: AlignedCheckpoint | None = None, keep: int = 64) -> None:
        self._seen: dict[str, dict[tuple[int, int], int]] = {}
        self._shape: dict[str, tuple[int, int]] = {}  # job -> (subtasks, partitions) of its newest marker
        self._done: dict[str, int] = {}
        self._completed: deque[AlignedCheckpoint] = deque([initial] if initial else [], maxlen=keep)
        self.ignored = 0  # markers read from a partition other than the one they vouch for

    def observe(self, partition: int, marker: CheckpointMarker) -> None:
        if marker.partition != partition:
            self.ignored += 1
            return
        seen = self._seen.setdefault(marker.job_id, {})
        key = (marker.subtask, marker.partition)
        seen[key] = max(seen.get(key, -1), marker.checkpoint_id)
        self._shape[marker.job_id] = (marker.subtasks, marker.partitions)
        self._update(marker.job_id)

    def _update(self, job_id: str) -> None:
        subtasks, partitions = self._shape[job_id]
        seen = self._seen[job_id]
        complete = min((seen.get((s, p), -1) for s in range(subtasks) for p in range(partitions)), default=-1)
        if complete > self._done.get(job_id, -1):
            self._done[job_id] = complete
            self._completed.append(AlignedCheckpoint(job_id, complete))

    def completed(self) -> list[AlignedCheckpoint]:
        """Marker-complete checkpoints, oldest first (the initial one, if any, first)."""
        return list(self._completed)

    def aligned(self, exists: Callable[[AlignedCheckpoint], bool]) -> AlignedCheckpoint | None:
        """The most recently completed checkpoint that ``exists`` confirms, or ``None``."""
        return next((c for c in reversed(self._completed) if exists(c)), None)


def observe_all(alignment: CheckpointAlignment, records: Iterable[tuple[int, bytes]]) -> int:
    """Observe the markers among ``(partition, value)`` records; returns how many were malformed."""
    bad = 0
    for partition, value in records:
        marker = decode_marker(value)
        if marker is None:
            bad += 1
        else:
            alignment.observe(partition, marker)
    return bad
