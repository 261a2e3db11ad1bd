"""Checkpoint markers: the codec, the partition their keys land on, and which checkpoint a cut is aligned with."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from freshet.deltas import DeltaDecodeError, batch_of, decode_batch, decode_delta, encode_delta
from freshet.markers import (
    AlignedCheckpoint,
    CheckpointAlignment,
    CheckpointMarker,
    decode_marker,
    encode_marker,
    marker_key,
    murmur2,
    murmur2_partition,
)
from freshet.spec import load_feature_set
from freshet.wire import MARKER_BYTES
from serving.testing import random_deltas

LAYOUT = load_feature_set(Path(__file__).resolve().parent.parent / "feature_defs").layout()
JOB = "a1" * 16
OTHER = "b2" * 16


def marker(checkpoint: int, subtask: int = 0, partition: int = 0, *, job: str = JOB, subtasks: int = 1,
           partitions: int = 2) -> CheckpointMarker:  # fmt: skip
    return CheckpointMarker(job, checkpoint, subtask, subtasks, partition, partitions)


def test_a_marker_round_trips_and_is_neither_applied_nor_rejected() -> None:
    m = marker(41, subtask=1, partition=1, subtasks=2, partitions=3)
    value = encode_marker(m)
    assert len(value) == MARKER_BYTES and decode_marker(value) == m
    deltas = random_deltas(LAYOUT, random.Random(3), 5)
    values = [encode_delta(d, LAYOUT) for d in deltas]
    batch = decode_batch([values[0], value, *values[1:], value], LAYOUT)
    assert batch.rejected == {} and len(batch) == len(deltas)
    assert batch.marker_index.tolist() == [1, len(values) + 1]
    assert {(int(i), int(r)) for i, r in zip(batch.item_id, batch.region, strict=True)} == {
        (int(i), int(r)) for i, r in zip(batch_of(deltas, LAYOUT).item_id, batch_of(deltas, LAYOUT).region,
                                         strict=True)}  # fmt: skip
    with pytest.raises(DeltaDecodeError, match="checkpoint_marker"):
        decode_delta(value, LAYOUT)


@pytest.mark.parametrize(
    "mutate",
    [lambda v: v[:-1], lambda v: v + b"\0", lambda v: b"XD" + v[2:], lambda v: v[:2] + b"\2" + v[3:]],
)
def test_a_damaged_marker_is_a_counted_rejection(mutate) -> None:
    batch = decode_batch([mutate(encode_marker(marker(1)))], LAYOUT)
    assert sum(batch.rejected.values()) == 1 and batch.marker_index.size == 0


def test_inconsistent_markers_decode_to_none() -> None:
    assert decode_marker(encode_marker(marker(1, partition=2, partitions=2))) is None
    assert decode_marker(encode_marker(marker(1, subtask=1, subtasks=1))) is None
    assert decode_marker(encode_marker(marker(1, job="zz" * 16))) is None


def test_murmur2_is_kafkas_and_marker_keys_land_on_their_partition() -> None:
    from kafka.partitioner.default import murmur2 as kafka_murmur2

    rng = random.Random(0)
    for n in range(300):
        data = bytes(rng.randrange(256) for _ in range(n % 23))
        assert murmur2(data) & 0xFFFFFFFF == kafka_murmur2(data) & 0xFFFFFFFF, data
    for partitions in (1, 2, 3, 4, 7, 12):
        keys = [marker_key(p, partitions) for p in range(partitions)]
        assert [murmur2_partition(k, partitions) for k in keys] == list(range(partitions))
    assert marker_key(0, 1) == b"~checkpoint-0-0"


def test_a_checkpoint_is_aligned_once_every_subtask_marked_every_partition() -> None:
    alignment = CheckpointAlignment()
    everything = lambda c: True  # noqa: E731
    for subtask, partition in [(0, 0), (0, 1), (1, 0)]:
        alignment.observe(partition, marker(5, subtask, partition, subtasks=2))
    assert alignment.aligned(everything) is None, "subtask 1 has not marked partition 1"
    alignment.observe(1, marker(6, 1, 1, subtasks=2))  # a later marker implies the earlier ones were passed
    assert alignment.aligned(everything) == AlignedCheckpoint(JOB, 5)
    alignment.observe(0, marker(9, 0, 1, subtasks=2))
    assert alignment.ignored == 1, "a marker read from the wrong partition vouches for nothing"
    assert alignment.aligned(everything) == AlignedCheckpoint(JOB, 5)


def test_only_a_confirmed_checkpoint_is_named_and_restores_start_a_new_job() -> None:
    alignment = CheckpointAlignment(initial=AlignedCheckpoint(JOB, 2))
    for checkpoint in (3, 4):
        for p in range(2):
            alignment.observe(p, marker(checkpoint, partition=p))
    for p in range(2):  # the job restored from checkpoint 3 under a new id
        alignment.observe(p, marker(4, partition=p, job=OTHER))
    assert [c.checkpoint_id for c in alignment.completed()] == [2, 3, 4, 4]
    existing = {AlignedCheckpoint(JOB, 2), AlignedCheckpoint(JOB, 3)}  # JOB's 4 aborted, OTHER's not retained
    assert alignment.aligned(lambda c: c in existing) == AlignedCheckpoint(JOB, 3)
    assert alignment.aligned(lambda c: c.job_id == OTHER) == AlignedCheckpoint(OTHER, 4)
    assert alignment.aligned(lambda c: False) is None


def test_a_replica_snapshot_names_the_newest_marked_checkpoint_that_exists(tmp_path: Path) -> None:
    from serving.consumer import PolledBatch, SourceRecord
    from serving.replica import Replica
    from serving.settings import Settings

    checkpoints = tmp_path / "checkpoints"
    for n in (3, 4):
        (checkpoints / JOB / f"chk-{n}").mkdir(parents=True)
    (checkpoints / JOB / "chk-3" / "_metadata").write_bytes(b"x")  # chk-4 never completed (no _metadata)
    settings = Settings.load(
        {"snapshot_dir": tmp_path / "snapshots", "checkpoint_dir": checkpoints}, environ={}
    )
    replica = Replica(LAYOUT, settings, name="t")
    replica.restore()
    deltas = [encode_delta(d, LAYOUT) for d in random_deltas(LAYOUT, random.Random(1), 4)]
    records = [SourceRecord(0, 0, deltas[0]), SourceRecord(0, 1, encode_marker(marker(3, partition=0))),
               SourceRecord(1, 0, encode_marker(marker(3, partition=1))), SourceRecord(1, 1, deltas[1]),
               SourceRecord(0, 2, encode_marker(marker(4, partition=0))),
               SourceRecord(1, 2, encode_marker(marker(4, partition=1))), SourceRecord(1, 3, deltas[2])]  # fmt: skip
    replica.apply_records(PolledBatch.of_records(records), {0: 3, 1: 4})
    assert replica.metrics.rejected._metrics == {} or all(
        c._value.get() == 0 for c in replica.metrics.rejected._metrics.values()
    ), "markers are not rejections"
    named = str((checkpoints / JOB / "chk-3").resolve())
    assert replica.state().flink_checkpoint == named
    taken = replica.snapshot()
    assert taken.flink_checkpoint == named

    restarted = Replica(LAYOUT, settings, name="t2")
    manifest = restarted.restore()
    assert manifest is not None and manifest.flink_checkpoint == named
    assert restarted.state().flink_checkpoint == named, "a restored replica stays aligned with its snapshot's"
