"""The replica's HTTP API end to end: real broker, real app (TestClient runs the lifespan), real deltas."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from freshet.deltas import encode_delta
from freshet.layout import BloomField, ExactBit, FeatureColumn, ScoreTerm, TensorLayout
from serving.app import create_app
from serving.consumer import KafkaDeltaSource
from serving.replica import Replica
from serving.settings import Settings
from serving.testing import (
    DeltaProducer,
    eligibility_delta,
    embedding_delta,
    feature_delta,
    tombstone_delta,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.http]

LAYOUT = TensorLayout(
    embedding_dim=4,
    feature_columns=(FeatureColumn("likes_1h", 0), FeatureColumn("shares_1h", 1)),
    exact_bits=(ExactBit("safe", 0), ExactBit("nsfw", 1)),
    bloom_fields=(BloomField("region", 64, 64, 3), BloomField("language", 128, 64, 2)),
    score_terms=(ScoreTerm(0, 0.0, "none"),),
)
T0 = 1_700_000_000_000


StartReplica = Callable[..., tuple[TestClient, Replica]]


@pytest.fixture
def start_replica(broker, tmp_path: Path) -> Iterator[StartReplica]:
    """``start_replica(topic, **settings)``: a running replica app; stopped at the end of the test."""
    stack = contextlib.ExitStack()

    def start(topic: str, *, layout: TensorLayout = LAYOUT, source_factory: Any = None,
              name: str = "r1", **overrides: Any) -> tuple[TestClient, Replica]:  # fmt: skip
        values = {"bootstrap_servers": broker.bootstrap_servers, "delta_topic": topic,
                  "snapshot_dir": tmp_path / name, "snapshot_every_s": 0, "snapshot_every_deltas": 0,
                  "poll_batch_size": 500, **overrides}  # fmt: skip
        settings = Settings.load(values, environ={})
        replica = Replica(layout, settings, source_factory=source_factory, name=name)
        client = stack.enter_context(TestClient(create_app(replica, settings)))
        return client, replica

    with stack:
        yield start


def wait_ready(client: TestClient, timeout_s: float = 20) -> None:
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout_s=timeout_s, what="/readyz 200")


def wait_offsets(client: TestClient, replica: Replica, records: int) -> dict[str, Any]:
    """Until the replica has consumed ``records`` records in total; returns /v1/state."""
    registry = replica.metrics.registry
    wait_until(lambda: (registry.get_sample_value("freshet_delta_records_total") or 0) >= records,
               what=f"{records} records consumed")  # fmt: skip
    return client.get("/v1/state").json()


def _items(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [hit["item_id"] for hit in response.json()["items"]]


# ---------------------------------------------------------------- deltas become visible


def test_deltas_become_visible_through_items_and_retrieve(broker, make_topic, start_replica) -> None:
    topic = make_topic(partitions=3)
    client, replica = start_replica(topic)
    wait_ready(client)
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        producer.send([
            embedding_delta(1, [1, 0, 0, 0], publish_ms=T0),
            embedding_delta(2, [0.9, 0.1, 0, 0], publish_ms=T0),
            embedding_delta(3, [0.5, 0.5, 0, 0], publish_ms=T0),
            feature_delta(LAYOUT, 1, "likes_1h", 7.0, window_end_ms=T0 + 60_000),
            eligibility_delta(LAYOUT, 1, change_ms=T0, bits=["safe"], bloom={"region": ["PT"], "language": ["pt"]}),
            eligibility_delta(LAYOUT, 2, change_ms=T0, bits=["nsfw"], bloom={"region": ["BR"], "language": ["pt"]}),
            eligibility_delta(LAYOUT, 3, change_ms=T0, bits=["safe"], bloom={"region": ["PT"], "language": ["en"]}),
        ])  # fmt: skip
    state = wait_offsets(client, replica, 7)
    assert state["items"] == 3 and state["layout_hash"] == LAYOUT.layout_hash

    item = client.get("/v1/items/1", params={"bloom": ["region:PT", "region:BR", "language:pt"]}).json()
    assert item["embedding"] == [1, 0, 0, 0]
    assert item["features"] == {"likes_1h": 7.0, "shares_1h": 0.0}
    assert item["eligibility"]["bits"] == ["safe"]
    assert item["eligibility"]["bloom_matches"] == {
        "region": {"PT": True, "BR": False},
        "language": {"pt": True},
    }
    assert len(item["eligibility"]["bloom"]["region"]) == 3
    assert item["versions"]["embedding"] > 0 and item["versions"]["shares_1h"] == -1

    query = {"embedding": [1, 0, 0, 0], "k": 10}
    assert _items(client.post("/v1/retrieve", json=query)) == [1, 2, 3]
    hits = client.post("/v1/retrieve", json={**query, "k": 1}).json()["items"]
    assert hits == [{"item_id": 1, "score": 1.0, "features": {"likes_1h": 7.0, "shares_1h": 0.0}}]
    assert _items(client.post("/v1/retrieve", json={**query, "required_bits": ["safe"]})) == [1, 3]
    assert _items(client.post("/v1/retrieve", json={**query, "excluded_bits": ["nsfw"]})) == [1, 3]
    assert _items(client.post("/v1/retrieve", json={**query, "bloom": {"region": ["BR"]}})) == [2]
    assert _items(client.post("/v1/retrieve", json={**query, "bloom": {"language": ["en", "de"]}})) == [3]
    both = {**query, "bloom": {"region": ["PT"], "language": ["pt", "en"]}, "required_bits": ["safe"]}
    assert _items(client.post("/v1/retrieve", json=both)) == [1, 3]


def test_newer_versions_win_and_deletes_remove(broker, make_topic, start_replica) -> None:
    topic = make_topic(partitions=2)
    client, replica = start_replica(topic)
    wait_ready(client)
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        producer.send([embedding_delta(5, [0, 1, 0, 0], publish_ms=T0),
                       feature_delta(LAYOUT, 5, "likes_1h", 3.0, window_end_ms=T0 + 120_000)])  # fmt: skip
        producer.send([feature_delta(LAYOUT, 5, "likes_1h", 1.0, window_end_ms=T0 + 60_000),  # older window: stale
                       feature_delta(LAYOUT, 5, "likes_1h", 3.0, window_end_ms=T0 + 120_000),  # redelivery
                       feature_delta(LAYOUT, 5, "shares_1h", 2.0, window_end_ms=T0 + 60_000, firing=1)])  # fmt: skip
        wait_offsets(client, replica, 5)
        assert client.get("/v1/items/5").json()["features"] == {"likes_1h": 3.0, "shares_1h": 2.0}
        assert replica.metrics.registry.get_sample_value("freshet_deltas_skipped_stale_total") == 2
        producer.send([tombstone_delta(5, delete_ms=T0 + 200_000)])
        wait_offsets(client, replica, 6)
    response = client.get("/v1/items/5")
    assert response.status_code == 404 and "not in the model" in response.json()["detail"]
    assert _items(client.post("/v1/retrieve", json={"embedding": [0, 1, 0, 0]})) == []


def test_aborted_transactions_change_nothing_that_committed_ones_do_not(
    broker, make_topic, start_replica
) -> None:
    """The embedded broker shows aborted records to read_committed consumers (DESIGN.md); what a replica
    ends with must not depend on it: an aborted transaction that re-sends what a committed one holds (a
    Flink restore re-emits exactly that) leaves the same state."""
    topic = make_topic(partitions=1)
    client, replica = start_replica(topic)
    wait_ready(client)
    deltas = [embedding_delta(9, [0, 0, 1, 0], publish_ms=T0), feature_delta(LAYOUT, 9, "likes_1h", 4.0,
              window_end_ms=T0 + 60_000)]  # fmt: skip
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        producer.send(deltas, commit=False)
        producer.send(deltas)
    wait_until(lambda: client.get("/v1/items/9").status_code == 200, what="item 9")
    wait_until(lambda: replica.consumer.total_lag() == 0, what="lag 0")
    assert client.get("/v1/items/9").json()["features"]["likes_1h"] == 4.0
    assert client.get("/v1/state").json()["items"] == 1


# ---------------------------------------------------------------- readiness


class GatedSource(KafkaDeltaSource):
    """A Kafka source whose ``open`` waits for a gate: the replica cannot reach the topic until the test says."""

    gate = threading.Event()

    def open(self, offsets: Any) -> list[int]:
        if not self.gate.wait(timeout=0.2):
            raise ConnectionError("gate closed")
        return super().open(offsets)


def test_readyz_is_503_until_caught_up(broker, make_topic, start_replica) -> None:
    topic = make_topic(partitions=2)
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        for start in range(0, 600, 200):
            producer.send(
                embedding_delta(i, [1, i, 0, 0], publish_ms=T0 + i) for i in range(start, start + 200)
            )
    GatedSource.gate.clear()
    client, replica = start_replica(
        topic, poll_batch_size=50, source_factory=lambda: GatedSource(broker.bootstrap_servers, topic)
    )
    response = client.get("/readyz")
    assert response.status_code == 503 and not response.json()["ready"]
    wait_until(
        lambda: "gate closed" in client.get("/readyz").json()["detail"], what="the source error reported"
    )
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    GatedSource.gate.set()
    wait_ready(client)
    state = client.get("/v1/state").json()  # ready means every record was applied
    assert state["items"] == 600 and state["ready"]
    assert client.get("/readyz").json()["lag"] == {"0": 0, "1": 0}
    assert replica.metrics.registry.get_sample_value("freshet_ready") == 1


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"embedding": [1, 0, 0]}, 422, "embedding_dim 4"),
        ({"embedding": [1, 0, 0, 0], "k": 0}, 422, "greater than or equal to 1"),
        ({"embedding": [1, 0, 0, 0], "k": 1001}, 422, "less than or equal to 1000"),
        ({"embedding": [1, 0, 0, 0], "required_bits": ["vip"]}, 422, "unknown bit 'vip' (known: nsfw, safe)"),
        ({"embedding": [1, 0, 0, 0], "excluded_bits": ["safe"], "required_bits": ["safe"]}, 422, "also required"),
        ({"embedding": [1, 0, 0, 0], "bloom": {"country": ["PT"]}}, 422, "unknown field 'country'"),
        ({"embedding": [1, 0, 0, 0], "bloom": {"region": []}}, 422, "at least one value"),
        ({"embedding": [1, 0, 0, 0], "bloom": {"region": "PT"}}, 422, "valid list"),
        ({"embedding": [1, 0, 0, 0], "query": [1]}, 422, "Extra inputs are not permitted"),
        ({"embedding": [1, 0, 0, 0], "user": {"id": 3}}, 422, "exactly one of embedding"),
        ({"embedding": ["x", 0, 0, 0]}, 422, "valid number"),
        ({"k": 3}, 422, "exactly one of embedding"),
        ({"user": {"id": {"nested": 1}}}, 422, "Input should be a valid string"),
        (b'{"embedding": [1e400, 0, 0, 0]}', 422, "NaN or Inf"),
        (b'{"embedding": [NaN, 0, 0, 0]}', 422, "NaN or Inf"),
        ({"embedding": [0.0] * 300_000}, 413, "larger than"),
    ],
)  # fmt: skip
def test_bad_retrieve_requests_get_4xx(
    make_topic, start_replica, body: dict[str, Any] | bytes, status: int, needle: str
) -> None:
    client, _ = start_replica(make_topic(), max_body_bytes=1 << 20)
    if isinstance(body, bytes):
        response = client.post("/v1/retrieve", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/v1/retrieve", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_other_bad_requests_get_4xx(make_topic, start_replica) -> None:
    client, _ = start_replica(make_topic())
    assert (
        client.post(
            "/v1/retrieve", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert client.get("/v1/items/abc").status_code == 422
    assert client.get("/v1/items/12345").status_code == 404
    assert "unknown field 'country'" in client.get("/v1/items/1", params={"bloom": "country:PT"}).text
    assert client.get("/v1/items/1", params={"bloom": "region"}).status_code == 422
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/retrieve").status_code == 405


# ---------------------------------------------------------------- admin


def test_admin_disabled_without_a_token(make_topic, start_replica) -> None:
    client, _ = start_replica(make_topic())
    for headers in ({}, {"Authorization": "Bearer anything"}):
        response = client.post("/admin/snapshot", headers=headers)
        assert response.status_code == 404
        assert "disabled" in response.json()["detail"] and "FRESHET_ADMIN_TOKEN" in response.json()["detail"]


def test_admin_needs_the_right_token(broker, make_topic, start_replica, tmp_path: Path) -> None:
    topic = make_topic(partitions=2)
    client, replica = start_replica(topic, admin_token="s3cret")
    wait_ready(client)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"},
                    {"Authorization": "s3cret"}):  # fmt: skip
        response = client.post("/admin/snapshot", headers=headers)
        assert response.status_code == 403, (headers, response.text)
    assert not list((tmp_path / "r1").glob("snapshot-*"))
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        producer.send(embedding_delta(i, [i, 1, 0, 0], publish_ms=T0) for i in range(10))
    state = wait_offsets(client, replica, 10)
    response = client.post("/admin/snapshot", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert Path(body["path"]).parent == tmp_path / "r1" and (Path(body["path"]) / "manifest.json").is_file()
    assert body["digest"] == state["digest"] and body["offsets"] == state["offsets"] and body["items"] == 10


# ---------------------------------------------------------------- metrics, bad records


def test_bad_records_are_counted_and_the_stream_goes_on(broker, make_topic, start_replica) -> None:
    topic = make_topic(partitions=1)
    client, replica = start_replica(topic)
    wait_ready(client)
    other_layout = TensorLayout(embedding_dim=4, exact_bits=(ExactBit("other", 0),))
    wrong_layout = encode_delta(embedding_delta(20, [1, 0, 0, 0], publish_ms=T0), other_layout)
    stale_model = embedding_delta(21, [1, 0, 0, 0], publish_ms=T0, model_version=7)
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        producer.send_raw([(b"20", b"garbage" * 10), (b"20", wrong_layout), (b"20", None),
                           (b"21", encode_delta(stale_model, LAYOUT))])  # fmt: skip
        producer.send([embedding_delta(22, [1, 0, 0, 0], publish_ms=T0 + 5)])
    wait_until(
        lambda: client.get("/v1/items/22").status_code == 200, what="the good delta after the bad ones"
    )
    assert client.get("/v1/items/20").status_code == 404 and client.get("/v1/items/21").status_code == 404
    text = client.get("/metrics").text

    def sample(name: str, **labels: str) -> float | None:
        return replica.metrics.registry.get_sample_value(name, labels)

    assert sample("freshet_deltas_rejected_total", reason="bad_magic") == 1, text
    assert sample("freshet_deltas_rejected_total", reason="layout_hash") == 1, text
    assert sample("freshet_deltas_rejected_total", reason="null_value") == 1, text
    assert sample("freshet_deltas_rejected_total", reason="model_version_mismatch") == 1, text
    assert sample("freshet_deltas_applied_total") == 1
    assert sample("freshet_delta_records_total") == 5
    assert 'freshet_deltas_rejected_total{reason="layout_hash"} 1.0' in text
    assert sample("freshet_freshness_seconds_count", signal="embedding") == 1
    assert sample("freshet_freshness_seconds_count", signal="feature") == 0
    assert sample("freshet_newest_applied_event_age_seconds") > 0
    assert sample("freshet_consumer_lag_records", partition="0") == 0
    assert sample("freshet_apply_batch_seconds_count") >= 1
    assert sample("freshet_items") == 1
    assert client.get("/readyz").status_code == 200


def test_two_replicas_in_one_process_keep_their_own_metrics(broker, make_topic, start_replica) -> None:
    topic_a, topic_b = make_topic(name="a"), make_topic(name="b")
    client_a, _ = start_replica(topic_a, name="a")
    client_b, _ = start_replica(topic_b, name="b")
    wait_ready(client_a)
    wait_ready(client_b)
    with DeltaProducer(broker.bootstrap_servers, topic_a, LAYOUT) as producer:
        producer.send(embedding_delta(i, [1, 0, 0, 0], publish_ms=T0) for i in range(3))
    wait_until(lambda: client_a.get("/v1/state").json()["items"] == 3, what="replica a applied")
    assert client_b.get("/v1/state").json()["items"] == 0
    assert "freshet_deltas_applied_total 3.0" in client_a.get("/metrics").text
    assert "freshet_deltas_applied_total 0.0" in client_b.get("/metrics").text


def test_state_digest_matches_the_model(broker, make_topic, start_replica) -> None:
    topic = make_topic(partitions=2)
    client, replica = start_replica(topic)
    wait_ready(client)
    empty = client.get("/v1/state").json()
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        producer.send(embedding_delta(i, np.full(4, i), publish_ms=T0) for i in range(4))
    state = wait_offsets(client, replica, 4)
    assert state["digest"] == replica.model.digest() != empty["digest"]
    assert sum(state["offsets"].values()) >= 4 and state["model_version"] == 0
