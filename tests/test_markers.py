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


def test_markers_survive_a_batch_decoded_record_by_record(tmp_path: Path, monkeypatch) -> None:
    """When a batch cannot be decoded whole, the replica decodes it record by record; the markers it then
    finds must still point at the records they came from, or that checkpoint is never named."""
    import serving.replica
    from serving.consumer import PolledBatch, SourceRecord
    from serving.replica import Replica
    from serving.settings import Settings

    poison = b"poison: the batch codec raises on it"
    real = serving.replica.decode_batch

    def decode(values, layout):
        if poison in values:
            raise RuntimeError("cannot decode this batch whole")
        return real(values, layout)

    monkeypatch.setattr(serving.replica, "decode_batch", decode)
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / JOB / "chk-5").mkdir(parents=True)
    (checkpoints / JOB / "chk-5" / "_metadata").write_bytes(b"x")
    settings = Settings.load({"snapshot_dir": tmp_path / "s", "checkpoint_dir": checkpoints}, environ={})
    replica = Replica(LAYOUT, settings, name="t")
    replica.restore()
    delta = encode_delta(random_deltas(LAYOUT, random.Random(2), 1)[0], LAYOUT)
    records = [SourceRecord(0, 0, poison), SourceRecord(0, 1, delta),
               SourceRecord(0, 2, encode_marker(marker(5, partition=0))),
               SourceRecord(1, 0, encode_marker(marker(5, partition=1)))]  # fmt: skip
    replica.apply_records(PolledBatch.of_records(records), {0: 3, 1: 1})
    assert replica.metrics.rejected.labels(reason="undecodable")._value.get() == 1
    assert replica.state().flink_checkpoint == str((checkpoints / JOB / "chk-5").resolve())


SHAPE = [(s, p) for s in range(2) for p in range(3)]  # 2 marker subtasks, 3 delta-topic partitions


@pytest.mark.parametrize("missing", SHAPE, ids=[f"subtask{s}-partition{p}" for s, p in SHAPE])
def test_a_checkpoint_missing_one_subtasks_marker_on_one_partition_is_never_named(missing) -> None:
    """Markers from only some subtasks or on only some partitions vouch for nothing: the absent one may still
    have deltas before its barrier in flight; a later checkpoint's markers elsewhere change nothing."""
    alignment = CheckpointAlignment()
    for subtask, partition in SHAPE:
        if (subtask, partition) != missing:
            alignment.observe(partition, marker(7, subtask, partition, subtasks=2, partitions=3))
            alignment.observe(partition, marker(8, subtask, partition, subtasks=2, partitions=3))
    assert alignment.aligned(lambda c: True) is None and alignment.completed() == []
    subtask, partition = missing
    alignment.observe(partition, marker(7, subtask, partition, subtasks=2, partitions=3))
    assert alignment.aligned(lambda c: True) == AlignedCheckpoint(JOB, 7), (
        "complete once the last one is read"
    )


def test_markers_of_two_jobs_never_complete_each_others_checkpoints() -> None:
    alignment = CheckpointAlignment()
    alignment.observe(0, marker(3, partition=0, job=JOB))
    alignment.observe(1, marker(3, partition=1, job=OTHER))
    assert alignment.aligned(lambda c: True) is None


def test_the_replica_names_only_a_checkpoint_whose_metadata_exists(tmp_path: Path) -> None:
    """chk-N without ``_metadata`` is a checkpoint Flink started and never completed (or is still writing):
    a broker that shows aborted transactions can show its markers, so it is never named."""
    from serving.alignment import ReplicaAlignment

    for n in (3, 4):
        (tmp_path / JOB / f"chk-{n}").mkdir(parents=True)
    candidates = [AlignedCheckpoint(JOB, n) for n in (3, 4, 5)]  # chk-5: no directory at all
    assert ReplicaAlignment(tmp_path).name(candidates) is None
    (tmp_path / JOB / "chk-3" / "_metadata").write_bytes(b"x")
    assert ReplicaAlignment(tmp_path).name(candidates) == str((tmp_path / JOB / "chk-3").resolve())
    assert ReplicaAlignment(None).name(candidates) is None, "no checkpoint directory: nothing is named"


def plan(strategy: str = "FORWARD", writer_parallelism: int = 1, joined: bool = False) -> dict:
    """The delta path of the job's JSON execution plan (ids and names as Flink 2.0 writes them)."""
    scan_inputs = [
        {"id": 28, "ship_strategy": "FORWARD"},
        *([{"id": 6, "ship_strategy": "FORWARD"}] * joined),
    ]
    return {"nodes": [
        {"id": 6, "contents": "windows engagement", "parallelism": 1, "predecessors": []},
        {"id": 28, "contents": "checkpoint markers", "parallelism": 1, "predecessors": [{"id": 6, "ship_strategy": "FORWARD"}]},
        {"id": 32, "contents": "[1]:TableSourceScan(table=[[*anonymous_datastream_source$1*]])", "parallelism": 1,
         "predecessors": scan_inputs},
        {"id": 33, "contents": "[2]:ConstraintEnforcer[NotNullEnforcer(fields=[item_id])]", "parallelism": 1,
         "predecessors": [{"id": 32, "ship_strategy": strategy}]},
        {"id": 46, "contents": "deltas_sink[2]: Writer", "parallelism": writer_parallelism,
         "predecessors": [{"id": 33, "ship_strategy": "FORWARD"}]},
        {"id": 48, "contents": "deltas_sink[2]: Committer", "parallelism": 1, "predecessors": [{"id": 46, "ship_strategy": "FORWARD"}]},
    ]}  # fmt: skip


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        ({}, None),
        ({"strategy": "REBALANCE"}, "REBALANCE edge into '[2]:ConstraintEnforcer"),
        ({"strategy": "HASH"}, "HASH edge into"),
        ({"writer_parallelism": 2}, "'deltas_sink[2]: Writer' at parallelism 2, markers at 1"),
        ({"joined": True}, "has inputs other than the markers' stream"),
    ],
)
def test_the_job_refuses_a_plan_where_markers_do_not_feed_the_delta_writer_one_to_one(shape, problem) -> None:
    from flink_jobs.markers import marker_path_problems

    problems = marker_path_problems(plan(**shape), "deltas_sink")
    assert problems == [] if problem is None else any(problem in p for p in problems), problems


def test_a_plan_without_the_marker_operator_or_sink_is_refused() -> None:
    from flink_jobs.markers import marker_path_problems

    no_markers = {"nodes": [n for n in plan()["nodes"] if n["contents"] != "checkpoint markers"]}
    assert marker_path_problems(no_markers, "deltas_sink") == [
        "0 'checkpoint markers' operators in the plan, expected one"
    ]
    assert "feeds 0 operators" in marker_path_problems(plan(), "other_sink")[0]
