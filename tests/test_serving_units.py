"""Serving pieces that need neither a broker nor a model: settings, body limit, metrics, doctests."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from pydantic import ValidationError

from serving.limits import BodySizeLimit
from serving.metrics import VectorHistogram
from serving.settings import Settings


@pytest.mark.parametrize("module", ["serving.settings", "serving.query", "serving.snapshots"])
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- settings


def test_flags_win_over_env_which_wins_over_defaults() -> None:
    env = {"FRESHET_PORT": "9000", "FRESHET_DELTA_TOPIC": "from-env", "FRESHET_SNAPSHOT_RETENTION": "5"}
    s = Settings.load({"port": 9001, "delta_topic": None}, environ=env)
    assert (s.port, s.delta_topic, s.snapshot_retention) == (9001, "from-env", 5)
    assert s.bootstrap_servers == Settings().bootstrap_servers


def test_admin_token_is_secret_and_absent_means_disabled() -> None:
    assert not Settings.load({}, environ={}).admin_enabled()
    assert not Settings.load({}, environ={"FRESHET_ADMIN_TOKEN": ""}).admin_enabled()
    s = Settings.load({}, environ={"FRESHET_ADMIN_TOKEN": "s3cret"})
    assert s.admin_enabled() and "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "field"),
    [({"FRESHET_PORT": "eighty"}, "port"), ({"FRESHET_SNAPSHOT_RETENTION": "0"}, "snapshot_retention"),
     ({"FRESHET_NO_SUCH": "1"}, None)],
)  # fmt: skip
def test_bad_settings_name_the_field(env: dict[str, str], field: str | None) -> None:
    if field is None:  # unknown FRESHET_* variables are ignored, unknown overrides are refused
        Settings.load({}, environ=env)
        with pytest.raises(ValidationError, match="no_such"):
            Settings.load({"no_such": 1}, environ={})
        return
    with pytest.raises(ValidationError, match=field):
        Settings.load({}, environ=env)


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Settings().port = 1  # type: ignore[misc]


# ---------------------------------------------------------------- body size limit


def _echo_app(limit: int) -> TestClient:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    app.add_middleware(BodySizeLimit, max_body_bytes=limit)
    return TestClient(app)


def test_body_limit_by_content_length() -> None:
    client = _echo_app(100)
    assert client.post("/echo", content=b"x" * 100).json() == {"size": 100}
    response = client.post("/echo", content=b"x" * 101)
    assert response.status_code == 413
    assert "100 bytes" in response.json()["detail"]


def test_body_limit_for_chunked_bodies() -> None:
    client = _echo_app(100)

    def chunks(n: int):  # a generator body is sent chunked, without Content-Length
        for _ in range(n):
            yield b"x" * 30

    assert client.post("/echo", content=chunks(3)).json() == {"size": 90}
    assert client.post("/echo", content=chunks(4)).status_code == 413


# ---------------------------------------------------------------- vectorized histogram


def test_vector_histogram_matches_prometheus_histogram() -> None:
    buckets = (0.1, 1.0, 10.0)
    values = np.array([0.0, 0.1, 0.5, 1.0, 1.5, 10.0, 11.0, 1e6])
    reference_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("lat_seconds", "doc", ["signal"], buckets=buckets, registry=reference_registry)
    for v in values:
        reference.labels(signal="feature").observe(float(v))
    reference.labels(signal="embedding")  # present, empty
    ours = VectorHistogram("lat_seconds", "doc", "signal", ("embedding", "feature"), buckets)
    ours_registry.register(ours)
    ours.observe_many("feature", values[:3])
    ours.observe_many("feature", values[3:])
    ours.observe_many("embedding", [])

    def samples(registry: CollectorRegistry) -> list[str]:
        return sorted(line for line in generate_latest(registry).decode().splitlines()
                      if line.startswith("lat_seconds_") and "_created" not in line)  # fmt: skip

    assert samples(ours_registry) == samples(reference_registry)


def test_gc_paused_restores_the_collector_state_even_when_nested_or_raising() -> None:
    """Polls pause the cyclic collector; it must come back on (and stay off if it was off)."""
    import gc

    from serving.consumer import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "the inner pause found it off: it must leave it off"
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a poll failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled(), "disabled by someone else: stays disabled"
    finally:
        gc.enable()


def test_polled_batch_locates_records_without_a_record_object_each() -> None:
    from serving.consumer import PolledBatch, SourceRecord

    records = [SourceRecord(1, 7, b"a"), SourceRecord(0, 3, None), SourceRecord(1, 9, b"c")]
    batch = PolledBatch.of_records(records)
    assert len(batch) == 3 and batch.values == [b"a", None, b"c"]
    assert [batch.partition(i) for i in range(3)] == [1, 0, 1]
    assert batch.records() == records


def test_records_left_out_are_counted_once_when_a_batch_decoded_ahead_is_split(tmp_path) -> None:
    """The read-ahead thread decodes a polled batch ahead; once the replica is ready it may hand that batch out
    in smaller parts, which are decoded again: what a decode leaves out is counted when a part is applied."""
    import random
    from pathlib import Path

    from freshet.deltas import encode_delta
    from freshet.spec import load_feature_set
    from serving.consumer import PolledBatch, SourceRecord
    from serving.replica import Replica
    from serving.testing import random_deltas

    layout = load_feature_set(Path(__file__).resolve().parent.parent / "feature_defs").layout()
    replica = Replica(layout, Settings.load({"snapshot_dir": tmp_path / "s"}, environ={}), name="t")
    replica.restore()
    records = [SourceRecord(0, 0, None)] + [
        SourceRecord(0, i + 1, encode_delta(d, layout))
        for i, d in enumerate(random_deltas(layout, random.Random(3), 3))
    ]
    replica.prepare(PolledBatch.of_records(records))  # decoded ahead, then split: the whole is never applied
    replica.apply_records(PolledBatch.of_records(records[:2]), {0: 2})
    replica.apply_records(PolledBatch.of_records(records[2:]), {0: 4})
    assert replica.metrics.rejected.labels(reason="null_value")._value.get() == 1
