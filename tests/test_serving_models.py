"""Model versions on a replica (DESIGN contract 7): stage beside the active one, switch between queries,
one-call rollback, embeddings of another version rejected and counted, corrupt publishes refused."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from freshet.deltas import batch_of
from freshet.layout import BloomField, ExactBit, FeatureColumn, TensorLayout
from freshet.model import IndexModel
from freshet.publish import publish_model, version_dir
from freshet.towers import TowerConfig, TwoTower
from serving.app import create_app
from serving.models import carried_over
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

LAYOUT = TensorLayout(
    embedding_dim=4,
    feature_columns=(FeatureColumn("likes_1h", 0),),
    exact_bits=(ExactBit("safe", 0),),
    bloom_fields=(BloomField("region", 64, 64, 3),),
    embedding_model="two_tower",
)
T0 = 1_700_000_000_000
ADMIN = {"Authorization": "Bearer t0ken"}


def publish(root: Path, version: int, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    model = TwoTower(TowerConfig(("user_id", "interests"), 4, buckets=64, hidden=8),
                     TowerConfig(("title",), 4, buckets=64, hidden=8))  # fmt: skip
    return publish_model(root, "two_tower", model, layout_hash=LAYOUT.layout_hash, version=version)


# ---------------------------------------------------------------- the carried-over index (no broker)


def test_carried_over_index_keeps_features_and_eligibility_and_drops_embeddings() -> None:
    old = IndexModel(LAYOUT, model_version=1)
    old.apply(batch_of([
        embedding_delta(1, [1, 0, 0, 0], publish_ms=T0, model_version=1),
        feature_delta(LAYOUT, 1, "likes_1h", 5.0, window_end_ms=T0 + 60_000),
        eligibility_delta(LAYOUT, 1, change_ms=T0, bits=["safe"], bloom={"region": ["PT"]}),
        embedding_delta(2, [0, 1, 0, 0], publish_ms=T0, model_version=1),
        tombstone_delta(2, delete_ms=T0 + 10),
        embedding_delta(2, [0, 0, 1, 0], publish_ms=T0 + 20, model_version=1),  # re-created after the delete
    ], LAYOUT))  # fmt: skip
    new = IndexModel.from_state(LAYOUT, carried_over(old.export_state(), 2))
    assert new.model_version == 2 and len(new) == 0
    item = new.item(1)
    assert item is not None and not item["valid"]
    assert (
        item["features"] == {"likes_1h": 5.0}
        and item["eligibility"].tolist() == old.item(1)["eligibility"].tolist()
    )
    # the new item tower re-embeds under the same version (publish time): it applies, it is not "stale"
    stats = new.apply(batch_of([embedding_delta(1, [0.5, 0.5, 0, 0], publish_ms=T0, model_version=2),
                                embedding_delta(1, [9, 9, 9, 9], publish_ms=T0, model_version=1)], LAYOUT))  # fmt: skip
    assert (stats.applied, stats.rejected) == (1, {"model_version_mismatch": 1})
    assert new.item(1)["embedding"].tolist() == [0.5, 0.5, 0, 0]
    # a delete still wins over older embeddings in the new version
    stats = new.apply(
        batch_of([embedding_delta(2, [1, 1, 1, 1], publish_ms=T0 + 5, model_version=2)], LAYOUT)
    )
    assert stats.skipped_stale == 1 and not new.item(2)["valid"]
    assert old.item(1)["embedding"].tolist() == [1, 0, 0, 0]  # the old index is untouched


# ---------------------------------------------------------------- a replica switching versions


@pytest.fixture
def replicas(broker, tmp_path: Path) -> Iterator[Any]:
    stack = contextlib.ExitStack()

    def start(topic: str, name: str = "r", **overrides: Any) -> tuple[TestClient, Replica]:
        values = {"bootstrap_servers": broker.bootstrap_servers, "delta_topic": topic,
                  "snapshot_dir": tmp_path / name, "snapshot_every_s": 0, "snapshot_every_deltas": 0,
                  "admin_token": "t0ken", "model_dir": tmp_path / "models", **overrides}  # fmt: skip
        settings = Settings.load(values, environ={})
        replica = Replica(LAYOUT, settings, name=name)
        return stack.enter_context(TestClient(create_app(replica, settings))), replica

    with stack:
        yield start


def applied_through(client: TestClient, producer: DeltaProducer) -> Any:
    def done() -> Any:
        state = client.get("/v1/state").json()
        ok = state["ready"] and all(state["offsets"].get(p, 0) >= o for p, o in producer.next_offsets.items())
        return state if ok else None

    return wait_until(done, what="applied through the producer's offsets")


def ids(client: TestClient, **query: Any) -> list[int]:
    response = client.post("/v1/retrieve", json={"embedding": [1, 1, 1, 1], "k": 10, **query})
    assert response.status_code == 200, response.text
    return [hit["item_id"] for hit in response.json()["items"]]


@pytest.mark.kafka
@pytest.mark.http
def test_stage_switch_rollback(broker, make_topic, replicas, tmp_path) -> None:
    models = tmp_path / "models"
    publish(models, 1, seed=1)
    topic = make_topic(partitions=2)
    client, replica = replicas(topic)
    assert (
        client.get("/v1/state").json()["model_version"] == 1
    )  # the newest published version at a fresh start
    user_query = {"user": {"user_id": 7, "interests": ["cats"]}, "k": 5}
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        producer.send([embedding_delta(i, np.eye(4)[i - 1], publish_ms=T0, model_version=1) for i in (1, 2, 3, 4)]
                      + [feature_delta(LAYOUT, 1, "likes_1h", 3.0, window_end_ms=T0 + 60_000)])  # fmt: skip
        applied_through(client, producer)
        assert ids(client) == [1, 2, 3, 4]
        assert [h["item_id"] for h in client.post("/v1/retrieve", json=user_query).json()["items"]]

        publish(models, 2, seed=2)
        staged = client.post("/admin/model", json={"version": 2, "min_coverage": 0.5}, headers=ADMIN)
        assert staged.status_code == 202, staged.text
        assert staged.json() == {"status": "staged", "active_version": 1, "standby_version": 2, "coverage": 0.0,
                                 "snapshot": None}  # fmt: skip
        # the Flink job re-embeds with the new item tower: version-2 embeddings go to the staged index only
        producer.send([embedding_delta(i, np.eye(4)[4 - i], publish_ms=T0, model_version=2) for i in (1, 2, 3)]
                      + [feature_delta(LAYOUT, 1, "likes_1h", 4.0, window_end_ms=T0 + 120_000)])  # fmt: skip
        state = applied_through(client, producer)
        assert (state["model_version"], state["standby_version"], state["standby_role"]) == (1, 2, "staged")
        assert ids(client) == [1, 2, 3, 4]  # still version 1 answering
        assert replica.metrics.registry.get_sample_value(
            "freshet_deltas_rejected_total", {"reason": "model_version_mismatch"}) == 3  # fmt: skip

        response = client.post("/admin/model", json={"version": 2, "min_coverage": 0.75}, headers=ADMIN)
        assert response.status_code == 200, response.text
        switched = response.json()
        assert switched["status"] == "switched" and switched["coverage"] == 0.75
        assert (switched["active_version"], switched["standby_version"]) == (2, 1)
        assert Path(switched["snapshot"]).is_dir()
        assert client.get("/v1/state").json()["model_version"] == 2
        assert ids(client) == [1, 2, 3]  # item 4 has no version-2 embedding yet
        assert client.get("/v1/items/1").json()["embedding"] == [0, 0, 0, 1]
        assert client.get("/v1/items/1").json()["features"] == {"likes_1h": 4.0}
        assert client.post("/v1/retrieve", json=user_query).json()["model_version"] == 2

        # after the switch, version-1 embeddings are rejected and counted; the previous index still takes them
        producer.send([embedding_delta(5, [1, 1, 1, 1], publish_ms=T0 + 1, model_version=1),
                       feature_delta(LAYOUT, 2, "likes_1h", 9.0, window_end_ms=T0 + 60_000)])  # fmt: skip
        applied_through(client, producer)
        assert replica.metrics.registry.get_sample_value(
            "freshet_deltas_rejected_total", {"reason": "model_version_mismatch"}) == 4  # fmt: skip
        assert client.get("/v1/items/5").status_code == 404

        rolled = client.post("/admin/rollback", headers=ADMIN)
        assert rolled.status_code == 200, rolled.text
        assert (rolled.json()["status"], rolled.json()["active_version"]) == ("rolled_back", 1)
        assert ids(client) == [5, 1, 2, 3, 4]
        assert client.get("/v1/items/2").json()["features"] == {
            "likes_1h": 9.0
        }  # nothing lost while standing by
        assert client.post("/admin/rollback", headers=ADMIN).status_code == 409  # one step back only
    assert replica.metrics.registry.get_sample_value("freshet_model_version") == 1


@pytest.mark.kafka
@pytest.mark.http
def test_refused_versions_leave_the_active_one_serving(make_topic, replicas, tmp_path) -> None:
    models = tmp_path / "models"
    publish(models, 1, seed=1)
    bad = publish(models, 2, seed=2)
    raw = bytearray((bad / "query_tower.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / "query_tower.pt").write_bytes(bytes(raw))
    client, replica = replicas(make_topic())
    cases = [
        ({"version": 2}, "sha256"),
        ({"version": 9}, "no published version 9"),
        ({"version": 1}, "already active"),
    ]
    for body, needle in cases:
        response = client.post("/admin/model", json=body, headers=ADMIN)
        assert response.status_code == 409 and needle in response.json()["detail"], response.text
    assert client.post("/admin/rollback", headers=ADMIN).status_code == 409
    assert client.post("/admin/model", json={"version": 0}, headers=ADMIN).status_code == 422
    assert client.post("/admin/model", json={"version": 2}).status_code == 403
    state = client.get("/v1/state").json()
    assert (state["model_version"], state["standby_version"]) == (1, None)
    assert replica.metrics.registry.get_sample_value("freshet_model_refused_total") == 2
    assert version_dir(models, "two_tower", 2).is_dir()


@pytest.mark.kafka
@pytest.mark.http
def test_a_replica_restarts_on_the_version_of_its_snapshot(broker, make_topic, replicas, tmp_path) -> None:
    models = tmp_path / "models"
    publish(models, 1, seed=1)
    publish(models, 2, seed=2)
    topic = make_topic()
    client, _ = replicas(topic, "a")
    assert client.get("/v1/state").json()["model_version"] == 2
    with DeltaProducer(broker.bootstrap_servers, topic, LAYOUT) as producer:
        producer.send([embedding_delta(1, [1, 0, 0, 0], publish_ms=T0, model_version=2)])
        applied_through(client, producer)
    rolled = client.post("/admin/model", json={"version": 1}, headers=ADMIN)  # an older version, explicitly
    assert rolled.status_code == 200 and rolled.json()["active_version"] == 1
    live = client.get("/v1/state").json()
    later, _ = replicas(topic, "b", snapshot_dir=tmp_path / "a")
    state = wait_until(
        lambda: (s := later.get("/v1/state").json())["ready"] and s, what="the later replica ready"
    )
    assert (state["model_version"], state["digest"]) == (1, live["digest"]) and state["query_tower"]


def test_user_queries_need_a_query_tower(tmp_path) -> None:
    settings = Settings.load({"snapshot_dir": tmp_path / "s", "bootstrap_servers": "127.0.0.1:9"}, environ={})
    replica = Replica(LAYOUT, settings, name="no-models")
    with TestClient(create_app(replica, settings, manage_replica=False)) as client:
        response = client.post("/v1/retrieve", json={"user": {"user_id": 1}})
        assert response.status_code == 503 and "--model-dir" in response.json()["detail"]
        assert client.post("/admin/model", json={}).status_code == 404  # admin disabled: no token configured
