"""The replica's choice of Kafka client (``kafka_client``): both end at the same state on the same topic.

A replica on confluent-kafka and one on kafka-python read one topic (transactions of random size, some
aborted first, a re-emitted stretch) and must report the same ``/v1/state`` digest and offsets; a
confluent-kafka replica started from a kafka-python replica's snapshot seeks to the snapshot's offsets and
replays only the rest.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from freshet.layout import BloomField, ExactBit, FeatureColumn, TensorLayout
from serving import cli, testing
from serving.app import create_app
from serving.confluent_source import ConfluentDeltaSource
from serving.consumer import KafkaDeltaSource
from serving.readahead import ReadAheadSource
from serving.replica import Replica
from serving.settings import Settings
from serving.testing import DeltaProducer, embedding_delta, send_in_transactions, wait_until

LAYOUT = TensorLayout(
    embedding_dim=8,
    feature_columns=(FeatureColumn("likes_1h", 0), FeatureColumn("views_1d", 1, 1.0)),
    exact_bits=(ExactBit("safe", 0), ExactBit("nsfw", 1)),
    bloom_fields=(BloomField("region", 64, 64, 3),),
)
TOKEN = {"Authorization": "Bearer t0ken"}
T0 = 1_700_000_000_000


@pytest.fixture
def replicas(broker, tmp_path: Path) -> Iterator[Any]:
    """``start(topic, name, client, **settings) -> (http client, replica)``; all stopped at the end."""
    stack = contextlib.ExitStack()

    def start(topic: str, name: str, client: str, **overrides: Any) -> tuple[TestClient, Replica]:
        values = {"bootstrap_servers": broker.bootstrap_servers, "delta_topic": topic, "kafka_client": client,
                  "snapshot_dir": tmp_path / name, "snapshot_every_s": 0, "snapshot_every_deltas": 0,
                  "admin_token": "t0ken", "poll_batch_size": 64, **overrides}  # fmt: skip
        settings = Settings.load(values, environ={})
        replica = Replica(LAYOUT, settings, name=name)
        return stack.enter_context(TestClient(create_app(replica, settings))), replica

    with stack:
        yield start


def caught_up(client: TestClient, replica: Replica, offsets: dict[str, int]) -> Any:
    """``/v1/state`` once ready, lag 0 and at least at ``offsets`` (partition -> next offset)."""

    def done() -> Any:
        state = client.get("/v1/state").json()
        behind = any(state["offsets"].get(p, 0) < o for p, o in offsets.items())
        return None if behind or not state["ready"] or replica.consumer.total_lag() != 0 else state

    return wait_until(done, timeout_s=30, what=f"{replica.name} caught up")


def records_consumed(replica: Replica) -> float:
    return replica.metrics.registry.get_sample_value("freshet_delta_records_total") or 0.0


@pytest.mark.kafka
@pytest.mark.http
def test_both_clients_reach_the_same_digest_on_one_topic(broker, make_topic, replicas) -> None:
    rng = random.Random(21)
    topic = make_topic(partitions=3)
    deltas = testing.random_deltas(LAYOUT, rng, 600)
    py_client, py = replicas(
        topic, "py", "kafka-python", read_ahead=False
    )  # each batch polled after the last
    ck_client, ck = replicas(topic, "ck", "confluent-kafka")
    source = ck.consumer._source_factory()
    assert isinstance(source, ReadAheadSource) and isinstance(source.inner, ConfluentDeltaSource)
    assert isinstance(py.consumer._source_factory(), KafkaDeltaSource)
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        send_in_transactions(producer, deltas, rng)  # while both replicas consume live
        send_in_transactions(producer, deltas[:150], rng)  # a re-emitted stretch, as after a Flink restore
    py_state = caught_up(py_client, py, producer.next_offsets)
    ck_state = caught_up(ck_client, ck, producer.next_offsets)
    assert ck_state["digest"] == py_state["digest"] and ck_state["offsets"] == py_state["offsets"]
    assert ck_state["items"] == py_state["items"] > 0
    assert records_consumed(ck) == records_consumed(py) > 600
    query = {"embedding": [1, 0.5, 0, 0, -1, 0, 0, 0.25], "k": 20, "bloom": {"region": ["PT", "BR"]}}
    assert (
        ck_client.post("/v1/retrieve", json=query).json() == py_client.post("/v1/retrieve", json=query).json()
    )


@pytest.mark.kafka
@pytest.mark.http
def test_confluent_replica_seeks_to_the_snapshot_offsets(broker, make_topic, replicas, tmp_path) -> None:
    rng = random.Random(4)
    topic = make_topic(partitions=2)
    live_client, live = replicas(topic, "live", "kafka-python")
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        send_in_transactions(producer, testing.random_deltas(LAYOUT, rng, 300), rng)
        caught_up(live_client, live, producer.next_offsets)
        snap = live_client.post("/admin/snapshot", headers=TOKEN).json()
        # new items after the cut: a replay that skipped a record after the snapshot would miss one
        producer.send(embedding_delta(500 + i, np.full(8, i), publish_ms=T0) for i in range(40))
        send_in_transactions(producer, testing.random_deltas(LAYOUT, rng, 200), rng)
    final = caught_up(live_client, live, producer.next_offsets)
    assert final["digest"] != snap["digest"]

    late_client, late = replicas(topic, "late", "confluent-kafka", snapshot_dir=tmp_path / "live")
    state = caught_up(late_client, late, final["offsets"])
    assert state["started_from_snapshot"] == snap["path"]
    assert state["digest"] == final["digest"] and state["offsets"] == final["offsets"]
    after_cut = sum(final["offsets"][p] - snap["offsets"].get(p, 0) for p in final["offsets"])
    assert 0 < records_consumed(late) <= after_cut < records_consumed(live)


def test_the_client_is_chosen_by_flag_or_environment(tmp_path: Path) -> None:
    def source_of(settings: Settings) -> object:
        source = Replica(LAYOUT, settings, name="t").consumer._source_factory()
        assert isinstance(source, ReadAheadSource) == settings.read_ahead
        return source.inner if isinstance(source, ReadAheadSource) else source

    assert isinstance(source_of(Settings.load({}, environ={})), KafkaDeltaSource)
    env = {"FRESHET_KAFKA_CLIENT": "confluent-kafka"}
    assert isinstance(source_of(Settings.load({}, environ=env)), ConfluentDeltaSource)
    env["FRESHET_READ_AHEAD"] = "false"
    assert isinstance(source_of(Settings.load({}, environ=env)), ConfluentDeltaSource)
    args = cli.build_parser().parse_args(["--kafka-client", "confluent-kafka"])
    assert cli.settings_from_args(args).kafka_client == "confluent-kafka"
    with pytest.raises(ValidationError, match="kafka-python"):
        Settings.load({"kafka_client": "librdkafka"}, environ={})
