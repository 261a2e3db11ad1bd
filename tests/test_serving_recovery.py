"""Snapshots and recovery (DESIGN contract 5): a replica started from a snapshot and a replay of the delta topic
from the snapshot's offsets ends bit-identical (same ``/v1/state`` digest) to one that was live all along."""

from __future__ import annotations

import contextlib
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from freshet.deltas import Delta
from freshet.layout import BloomField, ExactBit, FeatureColumn, ScoreTerm, TensorLayout
from freshet.model import IndexModel
from freshet.snapshot import write_snapshot
from serving import testing
from serving.app import create_app
from serving.replica import Replica
from serving.settings import Settings
from serving.testing import DeltaProducer, embedding_delta, send_in_transactions, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.http]

LAYOUT = TensorLayout(
    embedding_dim=8,
    feature_columns=(FeatureColumn("likes_1h", 0), FeatureColumn("views_1d", 1, 1.0)),
    exact_bits=(ExactBit("safe", 0), ExactBit("nsfw", 1), ExactBit("kids", 2)),
    bloom_fields=(BloomField("region", 64, 64, 3),),
    score_terms=(ScoreTerm(0, 0.5, "log1p"),),
)
T0 = 1_700_000_000_000
TOKEN = {"Authorization": "Bearer t0ken"}


def random_deltas(rng: random.Random, n: int) -> list[Delta]:
    return testing.random_deltas(LAYOUT, rng, n)


@pytest.fixture
def replicas(broker, tmp_path: Path) -> Iterator[Any]:
    """``start(topic, name, **settings) -> (client, replica)``; every replica is stopped at the end."""
    stack = contextlib.ExitStack()

    def start(topic: str, name: str, **overrides: Any) -> tuple[TestClient, Replica]:
        values = {"bootstrap_servers": broker.bootstrap_servers, "delta_topic": topic,
                  "snapshot_dir": tmp_path / name, "snapshot_every_s": 0, "snapshot_every_deltas": 0,
                  "admin_token": "t0ken", "poll_batch_size": 64, **overrides}  # fmt: skip
        settings = Settings.load(values, environ={})
        replica = Replica(LAYOUT, settings, name=name)
        client = stack.enter_context(TestClient(create_app(replica, settings)))
        return client, replica

    with stack:
        yield start


def caught_up_state(
    client: TestClient, replica: Replica, producer_offsets: dict[str, int] | None = None
) -> Any:
    """``/v1/state`` once ready with lag 0 (and, if given, at least at ``producer_offsets``)."""

    def done() -> Any:
        state = client.get("/v1/state").json()
        if not state["ready"] or replica.consumer.total_lag() != 0:
            return None
        if producer_offsets and any(state["offsets"].get(p, 0) < o for p, o in producer_offsets.items()):
            return None
        return state

    return wait_until(done, timeout_s=30, what="caught up")


def records_consumed(replica: Replica) -> float:
    return replica.metrics.registry.get_sample_value("freshet_delta_records_total") or 0.0


def test_replica_from_snapshot_and_replay_matches_the_live_one(
    broker, make_topic, replicas, tmp_path
) -> None:
    rng = random.Random(5)
    topic = make_topic(partitions=3)
    live_client, live = replicas(topic, "live")
    first, second = random_deltas(rng, 400), random_deltas(rng, 400)
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        send_in_transactions(producer, first, rng)
        at_snapshot = caught_up_state(live_client, live, producer.next_offsets)
        snap = live_client.post("/admin/snapshot", headers=TOKEN).json()
        assert snap["digest"] == at_snapshot["digest"] and snap["offsets"] == at_snapshot["offsets"]
        # new items first, so that a replay that skipped any record after the cut would miss one of them
        producer.send(embedding_delta(1000 + i, np.full(8, i), publish_ms=T0) for i in range(60))
        send_in_transactions(producer, second, rng)
        send_in_transactions(producer, first[:100], rng)  # a re-emitted stretch, as after a Flink restore
    final = caught_up_state(live_client, live, producer.next_offsets)
    assert final["digest"] != at_snapshot["digest"]

    late_client, late = replicas(topic, "late", snapshot_dir=tmp_path / "live")
    late_state = caught_up_state(late_client, late, final["offsets"])
    assert late_state["started_from_snapshot"] == snap["path"]
    assert late_state["offsets"] == final["offsets"]
    assert late_state["digest"] == final["digest"]
    assert late_state["items"] == final["items"]
    # it replayed only what came after the snapshot's offsets, not the whole topic
    assert 0 < records_consumed(late) < records_consumed(live)
    query = {"embedding": [1, 0.5, 0, 0, -1, 0, 0, 0.25], "k": 25, "bloom": {"region": ["PT", "BR"]}}
    assert (
        late_client.post("/v1/retrieve", json=query).json()
        == live_client.post("/v1/retrieve", json=query).json()
    )


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


CORRUPTIONS = {
    "flipped_bytes": (lambda snap: _flip_bytes(snap / "item_embedding.arrow"), "checksum"),
    "truncated_file": (lambda snap: _truncate(snap / "features.arrow"), "truncated"),
    "garbage_manifest": (lambda snap: (snap / "manifest.json").write_text("{]"), "manifest"),
    "no_manifest": (lambda snap: (snap / "manifest.json").unlink(), "manifest"),
}


@pytest.mark.parametrize("corruption", [*CORRUPTIONS, "other_layout"])
def test_a_corrupt_newest_snapshot_is_skipped(
    broker, make_topic, replicas, tmp_path, corruption: str
) -> None:
    rng = random.Random(11)
    topic = make_topic(partitions=2)
    live_client, live = replicas(topic, "live")
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        send_in_transactions(producer, random_deltas(rng, 150), rng)
        caught_up_state(live_client, live, producer.next_offsets)
        older = live_client.post("/admin/snapshot", headers=TOKEN).json()
        send_in_transactions(producer, random_deltas(rng, 150), rng)
        caught_up_state(live_client, live, producer.next_offsets)
        newest = live_client.post("/admin/snapshot", headers=TOKEN).json()
    final = caught_up_state(live_client, live, producer.next_offsets)
    newest_path = Path(newest["path"])
    if corruption == "other_layout":
        other = TensorLayout(embedding_dim=8)
        shutil.rmtree(newest_path)
        newest_path = write_snapshot(IndexModel(other), tmp_path / "live", {0: 10**6, 1: 10**6})
        reason = "layout"
    else:
        corrupt, reason = CORRUPTIONS[corruption]
        corrupt(newest_path)

    late_client, late = replicas(topic, "late", snapshot_dir=tmp_path / "live")
    state = caught_up_state(late_client, late, final["offsets"])
    assert state["started_from_snapshot"] == older["path"]
    assert late.metrics.registry.get_sample_value("freshet_snapshots_refused_total", {"reason": reason}) == 1
    assert state["digest"] == final["digest"] and state["offsets"] == final["offsets"]
    assert newest_path.exists()  # refused, not deleted: left for a person to look at


def test_no_snapshot_means_a_replay_from_the_beginning(broker, make_topic, replicas, tmp_path) -> None:
    partial = tmp_path / "a" / ".tmp-snapshot-crashed"  # what a kill -9 during a snapshot write leaves
    partial.mkdir(parents=True)
    (partial / "features.arrow").write_bytes(b"half")
    rng = random.Random(3)
    topic = make_topic(partitions=2)
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        send_in_transactions(producer, random_deltas(rng, 200), rng)
    a_client, a = replicas(topic, "a")
    b_client, b = replicas(topic, "b")
    a_state = caught_up_state(a_client, a, producer.next_offsets)
    b_state = caught_up_state(b_client, b, producer.next_offsets)
    assert a_state["started_from_snapshot"] is None
    assert not partial.exists()
    assert a_state["digest"] == b_state["digest"] and a_state["items"] > 0


def test_periodic_snapshots_keep_the_newest_k(broker, make_topic, replicas, tmp_path) -> None:
    rng = random.Random(8)
    topic = make_topic(partitions=2)
    client, replica = replicas(topic, "periodic", snapshot_every_deltas=30, snapshot_retention=2)
    caught_up_state(client, replica)
    written = lambda: replica.metrics.registry.get_sample_value("freshet_snapshots_written_total")  # noqa: E731
    assert written() == 0
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        for round_ in range(4):
            producer.send(random_deltas(rng, 40))
            wait_until(lambda r=round_: written() >= r + 1, what=f"snapshot {round_ + 1}")
    final = caught_up_state(client, replica, producer.next_offsets)
    wait_until(lambda: not replica.snapshot_due(), what="no snapshot due")
    snapshots = sorted((tmp_path / "periodic").glob("snapshot-*"))
    assert len(snapshots) == 2
    late_client, late = replicas(topic, "late", snapshot_dir=tmp_path / "periodic")
    assert caught_up_state(late_client, late, final["offsets"])["digest"] == final["digest"]
    assert late_client.get("/v1/state").json()["started_from_snapshot"] == str(snapshots[-1])


def test_periodic_snapshots_by_time_only_when_something_changed(
    broker, make_topic, replicas, tmp_path
) -> None:
    topic = make_topic(partitions=1)
    client, replica = replicas(topic, "timed", snapshot_every_s=0.2)
    caught_up_state(client, replica)
    written = lambda: replica.metrics.registry.get_sample_value("freshet_snapshots_written_total")  # noqa: E731
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        producer.send(random_deltas(random.Random(1), 5))
    wait_until(lambda: written() == 1, what="a snapshot after the change")
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: written() > 1, timeout_s=1.5, what="no second snapshot")
    assert written() == 1
