"""The delta job for real: PyFlink on the local MiniCluster, the embedded broker, the committed deltas applied
to an ``IndexModel`` and held to an oracle computed from the same raw events.

How the outcome is made deterministic without luck: every engagement event is at most 4 s behind the greatest
event time before it in its partition (the declared out-of-orderness is 5 s). The engagement topic has two
partitions, watermarked each on its own in the Kafka source: the first few events go to partition 1, which then
stays idle, so the late phase below can only meet its watermark once the idle timeout (3 s in this test's copy of
the YAML) has taken partition 1 out of the minimum. Whenever Flink's periodic watermark falls, no event arrives behind it, so each window fires exactly
once, on time, with all its events, whatever the timing; a last event days later pushes the watermark past
every window. The oracle (``freshet.replay`` per feature) therefore sees the bounded-out-of-orderness
watermark after each event. Late data and its policies are covered by the pure tests (``test_job_logic``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kafka_helpers
import numpy as np
import pytest
from flink_driver import DriverProcess, stop_group
from job_streams import (
    T0_MS,
    attribute_docs,
    encode_docs,
    engagement_docs,
    feature_rows,
    item_docs,
    oracle_feature_rows,
    social_feed,
    two_tower,
)

from flink_jobs import connector
from freshet.broker import EmbeddedBroker
from freshet.deltas import DeltaKind, batch_of, decode_batch, decode_deltas
from freshet.eligibility import EligibilityEncoder
from freshet.events import Event
from freshet.job_logic import EventParser
from freshet.markers import is_marker
from freshet.model import IndexModel
from freshet.publish import publish_model
from freshet.versions import eligibility_version, embedding_version
from freshet.watermarks import watermarks_after_each

pytestmark = [pytest.mark.flink, pytest.mark.kafka]

FS = social_feed()
LAYOUT = FS.layout()
ITEMS = [11, 12, 13, 14, 15]
SENTINEL_ITEM = 999_999
FS_DEFS = Path(__file__).resolve().parent.parent / "feature_defs"
ENGAGEMENT_DELAY_MS = FS.source("engagement").watermark.max_out_of_orderness_ms
BAD = {  # one bad record per source, and the reason code each must get
    "engagement": (b'{"item_id": 11, "ts": 1700000000000, "action": "like"', "malformed_json"),
    "items_published": (b'{"item_id": 12, "created_at": 1700000000000, "author_id": "seven", "title": "t", '
                        b'"text": "t", "topic": "t"}', "wrong_type"),
    "item_attributes": (b'{"item_id": 13, "ts": 7258118400000000, "policy_status": "approved"}', "absurd_timestamp"),
}  # fmt: skip


def _require_flink() -> None:
    """Fail (never skip) with the command that installs whatever is missing."""
    if importlib.util.find_spec("pyflink") is None:
        pytest.fail("PyFlink is not installed: run `./dev setup`", pytrace=False)
    if shutil.which("java") is None:
        pytest.fail("no `java` on PATH: install a Java 17 JDK", pytrace=False)
    try:
        connector.jar_paths()
    except connector.ConnectorJarError as exc:
        pytest.fail(str(exc), pytrace=False)


class Driver(DriverProcess):
    """``freshet job run`` in its own process group; its JSON lines on stdout; SIGTERM cancels the job."""

    def __init__(self, argv: list[str], work_dir: Path) -> None:
        with (work_dir / "driver.err").open("w") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    text=True, start_new_session=True)  # fmt: skip
        super().__init__(proc, work_dir)

    def cancel(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        message = self.next_message(timeout_s=60)
        self.proc.wait(timeout=60)
        return message


@contextlib.contextmanager
def running(argv: list[str], work_dir: Path) -> Any:
    driver = None
    try:
        driver = Driver(argv, work_dir)
        yield driver
    finally:
        pid = driver.proc.pid if driver else None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            left = stop_group(pid, timeout_s=30)
            assert not left, f"processes of the Flink job outlived it and were killed: {left}"


IDLE_PARTITION_EVENTS = 5  # the first engagement events, on partition 1, which then falls idle
TEST_IDLE_TIMEOUT_S = 3  # the engagement source's idle timeout in the copied definitions


def _produce_to_partition(servers: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5)
    try:
        for value in values:
            producer.send(topic, value=value, partition=partition)
        producer.flush()
    finally:
        producer.close()


def parse_all(source: str, raws: list[bytes]) -> list[Event]:
    parse = EventParser.of(FS, source)
    return [e for e in map(parse, raws) if isinstance(e, Event)]


@dataclass(frozen=True)
class Setup:
    """Topics of one test, the model directory, and the `freshet job run` options that use them."""

    servers: str
    raw: dict[str, str]  # declared topic -> this test's topic
    deltas: str
    dlq: str
    models: Path
    defs: Path

    @classmethod
    def make(cls, broker: EmbeddedBroker, make_topic: Any, tmp_path: Path) -> Setup:
        raw = {
            "engagement": make_topic(2, "engagement"),
            "items.published": make_topic(2, "items"),
            "item.attributes": make_topic(2, "attributes"),
            "engagement.late": make_topic(1, "late"),
        }
        models = tmp_path / "models"
        publish_model(models, "two_tower", two_tower(0), layout_hash=LAYOUT.layout_hash)
        return cls(broker.bootstrap_servers, raw, make_topic(3, "deltas"), make_topic(1, "dlq"), models,
                   _short_idle_defs(tmp_path / "defs"))  # fmt: skip

    def run_argv(self, tmp_path: Path) -> list[str]:
        argv = [sys.executable, "-m", "freshet.cli", "job", "run", "--bootstrap", self.servers, "--defs", str(self.defs),
                "--models", str(self.models), "--delta-topic", self.deltas, "--dlq-topic", self.dlq,
                "--checkpoint-dir", str(tmp_path / "checkpoints"), "--log-dir", str(tmp_path / "flink-log"),
                "--job-name", f"test-{self.deltas}", "--model-poll-ms", "500", "--embed-linger-ms", "100",
                "--conf", "metrics.fetcher.update-interval=500"]  # fmt: skip
        for declared, actual in self.raw.items():
            argv += ["--topic", f"{declared}={actual}"]
        return argv

    def produce(self, engagement: list[bytes], items: list[bytes] = (), attributes: list[bytes] = (),  # type: ignore[assignment]
                idle_partition: list[bytes] = ()) -> None:  # type: ignore[assignment]  # fmt: skip
        _produce_to_partition(self.servers, self.raw["engagement"], list(idle_partition), partition=1)
        _produce_to_partition(self.servers, self.raw["engagement"], engagement)
        kafka_helpers.produce(self.servers, self.raw["items.published"], [(None, v) for v in items])
        kafka_helpers.produce(self.servers, self.raw["item.attributes"], [(None, v) for v in attributes])


def _short_idle_defs(target: Path) -> Path:
    """The feature definitions with the engagement source's idle timeout at 3 s (the declared 30 s would make the
    test wait): the job reads it from the YAML like any other declaration."""
    shutil.copytree(FS_DEFS, target)
    sources = target / "sources.yaml"
    text = sources.read_text()
    assert text.count("idle_timeout: 30s") == 1, "the engagement source declares a 30 s idle timeout"
    sources.write_text(text.replace("idle_timeout: 30s", f"idle_timeout: {TEST_IDLE_TIMEOUT_S}s"))
    return target


def streams(seed: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Engagement events none of which can be late (see the module docstring), items and attributes, raw."""
    rng = random.Random(seed)
    engagement = encode_docs(engagement_docs(rng, ITEMS, 600, step_ms=30_000, disorder_ms=4_000))
    items = [*encode_docs(item_docs(ITEMS)), BAD["items_published"][0]]
    attributes = [*encode_docs(attribute_docs(rng, ITEMS)), BAD["item_attributes"][0]]
    return engagement, items, attributes


#: an engagement event days after the others: the watermark passes every window
SENTINEL = json.dumps({"item_id": SENTINEL_ITEM, "ts": T0_MS + 5 * 86_400_000, "user_id": 1, "action": "view",
                       "dwell_ms": 1}).encode()  # fmt: skip


def late_phase(ahead: list[bytes]) -> tuple[bytes, int, list[bytes]]:
    """A last on-time event that puts the watermark 20 s past an hour boundary ``h``, that watermark, and events
    behind it: into windows ending at ``h`` (re-fired within allowed lateness, or too late for ``dwell_*``,
    whose lateness is 0), 11 min before ``h`` (too late for ``views_10m``: side output) and an hour before
    (too late for every window: dropped), and one behind the watermark that is not late at all."""
    hour = 3_600_000
    h = -(-max(json.loads(raw)["ts"] for raw in ahead) // hour) * hour
    watermark_ms = h + 20_000
    marker = {"item_id": ITEMS[0], "ts": watermark_ms + ENGAGEMENT_DELAY_MS + 1, "user_id": 1, "action": "share",
              "dwell_ms": 1}  # fmt: skip
    behind = [(h - 1_000, "like"), (h - 1_000, "view"), (h - 2_000, "comment"), (h - 700_000, "view"),
              (h - 3_700_000, "like"), (watermark_ms - 1, "share")]  # fmt: skip
    late = encode_docs({"item_id": ITEMS[i % len(ITEMS)], "ts": ts, "user_id": 90 + i, "action": action,
                        "dwell_ms": 7} for i, (ts, action) in enumerate(behind))  # fmt: skip
    return json.dumps(marker).encode(), watermark_ms, late


def test_the_job_turns_raw_events_into_the_oracle_deltas_exactly_once(
    broker: EmbeddedBroker, make_topic: Any, tmp_path: Path
) -> None:
    """Two phases. First events none of which is late, then, once the window operator's watermark stands where
    they put it (REST), late events that do not move it, then the far-future event: every late event meets
    exactly that watermark, so its fate (update, side output, drop) is what the oracle says."""
    _require_flink()
    setup = Setup.make(broker, make_topic, tmp_path)
    ahead, items, attributes = streams(seed=4)
    marker, watermark_ms, late = late_phase(ahead)
    ahead.append(marker)
    engagement = [*ahead, BAD["engagement"][0], *late, SENTINEL]
    expected = _expected(engagement, items, attributes)
    assert expected["late"] and expected["dropped"], "the late events meet both policies"
    assert any(version & 0xFFFFF for _, _, version, _, _ in expected["features"]), (
        "and update within lateness"
    )

    head = IDLE_PARTITION_EVENTS
    setup.produce([], items, attributes, idle_partition=ahead[:head])
    started = time.monotonic()
    with running(setup.run_argv(tmp_path), tmp_path) as job:
        # The idle partition's events go first, alone, and the partition falls idle before the other one has
        # delivered anything: from then on only an idle partition that is really left out lets the watermark
        # reach the other partition's. (Had both fallen idle in one periodic check, Flink would, as specified,
        # keep the combined watermark where it was: a race of the backlog read the test must not depend on.)
        idle_partition_ms = max(json.loads(raw)["ts"] for raw in ahead[:head]) - ENGAGEMENT_DELAY_MS - 1
        _wait_for_watermark(job, "windows engagement", idle_partition_ms, at_least=True)
        time.sleep(TEST_IDLE_TIMEOUT_S + 2)
        setup.produce([*ahead[head:], BAD["engagement"][0]])
        _wait_for_watermark(job, "windows engagement", watermark_ms)
        setup.produce([*late, SENTINEL])
        records = _read_until(setup.servers, setup.deltas, expected, timeout_s=180, job=job)
        elapsed = time.monotonic() - started
        _check_deltas(records, expected)
        _check_applied(records, expected)

        side = kafka_helpers.read_topic(
            setup.servers, setup.raw["engagement.late"], min_records=1, timeout_s=30
        )
        by_feature: dict[str, int] = {}
        for record in side:
            late_record = json.loads(record.value)
            assert (
                late_record["reason"].startswith("late: window")
                and late_record["watermark_ms"] == watermark_ms
            )
            by_feature[late_record["feature"]] = by_feature.get(late_record["feature"], 0) + 1
        assert by_feature == expected["late"]
        assert _counters(job, ".late_dropped_") == expected["dropped"]

        dlq = kafka_helpers.read_topic(setup.servers, setup.dlq, min_records=3, timeout_s=30)
        got = sorted((json.loads(r.value)["source"], json.loads(r.value)["reason"].split(":")[0],
                      json.loads(r.value)["raw"].encode("latin-1")) for r in dlq)  # fmt: skip
        assert sorted(set(got)) == sorted((s, reason, raw) for s, (raw, reason) in BAD.items())
        assert _counters(job, ".rejected_") == {reason: 1 for _, reason in BAD.values()}
        _check_model_swaps(setup, job)

        assert job.rest("")["state"] == "RUNNING", "bad input never stops the job"
        assert job.rest("/exceptions").get("exceptionHistory", {}).get("entries", []) == []
        final = job.cancel()
        assert final == {"job_id": job.job_id, "status": "CANCELED"}
    record = json.loads((tmp_path / "checkpoints" / job.job_id / "freshet-job.json").read_text())
    assert "--transactional-id-prefix" in record["argv"], "a restore resumes the same transactions"
    print(f"all deltas committed {elapsed:.1f} s after the driver started")


def test_a_job_cancelled_mid_stream_and_restored_ends_as_if_never_stopped(
    broker: EmbeddedBroker, make_topic: Any, tmp_path: Path
) -> None:
    """Windows open at the cut hold events from before and after it: they come out right only if their state
    is restored (a fresh start would resume from the committed offsets and miss the first half)."""
    _require_flink()
    setup = Setup.make(broker, make_topic, tmp_path)
    ahead, items, attributes = streams(seed=5)
    engagement = [*ahead, SENTINEL]
    expected = _expected(engagement, items, attributes)
    first, second = engagement[:300], engagement[300:]
    setup.produce(first, items, attributes)
    (tmp_path / "run1").mkdir()
    with running(setup.run_argv(tmp_path), tmp_path / "run1") as job:
        _wait_for_committed(setup, min_records=100, job=job)
        assert job.cancel()["status"] == "CANCELED"
    checkpoints = tmp_path / "checkpoints" / job.job_id

    setup.produce(second)
    (tmp_path / "run2").mkdir()
    restore = [sys.executable, "-m", "freshet.cli", "job", "restore", "--from", str(checkpoints)]
    with running(restore, tmp_path / "run2") as restored:
        latest = restored.rest("/checkpoints")["latest"]["restored"]
        assert Path(latest["external_path"].removeprefix("file:")).parent == checkpoints.resolve()
        records = _read_until(setup.servers, setup.deltas, expected, timeout_s=180, job=restored)
        _check_deltas(records, expected)
        _check_applied(records, expected)
        savepoint = _stop_with_savepoint(restored, tmp_path / "checkpoints")
    assert (savepoint / "_metadata").is_file()
    record = json.loads((savepoint / "freshet-job.json").read_text())
    assert record["job_id"] == restored.job_id, (
        "`freshet job restore --from <savepoint>` finds the job's options"
    )


def _stop_with_savepoint(job: Driver, checkpoint_dir: Path) -> Path:
    """``freshet job stop``: the job finishes with a savepoint, and its driver exits."""
    stop = [sys.executable, "-m", "freshet.cli", "job", "stop", "--job-id", job.job_id, "--rest", job.rest_url,
            "--checkpoint-dir", str(checkpoint_dir)]  # fmt: skip
    answer = subprocess.run(stop, capture_output=True, text=True, timeout=120, check=False)
    assert answer.returncode == 0, answer.stderr
    savepoint = Path(json.loads(answer.stdout.splitlines()[-1])["savepoint"])
    assert job.next_message(timeout_s=60) == {"job_id": job.job_id, "status": "FINISHED"}
    job.proc.wait(timeout=60)
    return savepoint


def _check_model_swaps(setup: Setup, job: Driver) -> None:
    """A newer published model is used without a restart; one that fails a check is counted and the old kept."""
    publish_model(setup.models, "two_tower", two_tower(1), layout_hash="0" * 16)  # v2: another layout
    _embed_and_check(setup, job, [21, 22], tower_seed=0, model_version=1)
    assert _counters(job, ".model_rejected_") == {"layout_hash": 1}
    publish_model(setup.models, "two_tower", two_tower(2), layout_hash=LAYOUT.layout_hash)  # v3
    _embed_and_check(setup, job, [31, 32], tower_seed=2, model_version=3)


def _embed_and_check(setup: Setup, job: Driver, ids: list[int], tower_seed: int, model_version: int) -> None:
    docs = item_docs(ids, start_ms=T0_MS + 7 * 86_400_000)
    setup.produce([], encode_docs(docs))
    deadline, got = time.monotonic() + 30, {}
    while time.monotonic() < deadline and got.keys() != set(ids):
        records = kafka_helpers.read_topic(setup.servers, setup.deltas, timeout_s=2)
        deltas = (d for r in records if not is_marker(r.value) for d in decode_deltas(r.value, LAYOUT))
        got = {d.item_id: d for d in deltas if d.kind == DeltaKind.EMBEDDING and d.item_id in ids}
    if got.keys() != set(ids):
        job.fail(f"embeddings of {ids} not committed within 30 s: {sorted(got)}")
    vectors = two_tower(tower_seed).item_tower.embed(docs).numpy()
    for doc, vector in zip(docs, vectors, strict=True):
        delta = got[doc["item_id"]]
        assert (delta.model_version, delta.version) == (model_version, embedding_version(doc["created_at"]))
        np.testing.assert_allclose(delta.values, vector, rtol=0, atol=1e-6)


def _wait_for_watermark(
    job: Driver, vertex_name: str, watermark_ms: int, timeout_s: float = 60, *, at_least: bool = False
) -> None:
    """Until the input watermark of the vertex named ``vertex_name`` is ``watermark_ms`` (or past it, with
    ``at_least``), read from the REST metrics."""
    vertices = [v for v in job.rest("")["vertices"] if vertex_name in v["name"]]
    assert len(vertices) == 1, [v["name"] for v in job.rest("")["vertices"]]
    url = f"{job.rest_url}/jobs/{job.job_id}/vertices/{vertices[0]['id']}/watermarks"
    deadline, seen = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        seen = [int(w["value"]) for w in _get(url) if w["id"].endswith("currentInputWatermark")]
        if seen and (min(seen) >= watermark_ms if at_least else min(seen) == watermark_ms):
            return
        time.sleep(0.3)
    job.fail(f"the watermark of {vertex_name!r} is {seen}, not {watermark_ms}, after {timeout_s} s")


def _wait_for_committed(setup: Setup, min_records: int, job: Driver, timeout_s: float = 60) -> None:
    """Until ``min_records`` deltas are committed, i.e. a checkpoint holding them has completed."""
    committed = kafka_helpers.read_topic(
        setup.servers, setup.deltas, min_records=min_records, timeout_s=timeout_s
    )
    if len(committed) < min_records:
        job.fail(f"only {len(committed)} deltas committed within {timeout_s} s")
    assert job.rest("/checkpoints")["counts"]["completed"] >= 1


def _expected(engagement: list[bytes], items: list[bytes], attributes: list[bytes]) -> dict[str, Any]:
    events = parse_all("engagement", engagement)
    watermarks = watermarks_after_each(
        [e.ts_ms for e in events], FS.source("engagement").watermark.max_out_of_orderness_ms
    )
    rows, late, dropped = oracle_feature_rows(FS, events, watermarks, None)
    assert len({r[0] for r in rows}) == len(ITEMS) and len(rows) > 500, "every item fires many windows"
    encoder = EligibilityEncoder.of(FS)
    eligibility = {(e.item_id, eligibility_version(e.ts_ms), tuple(encoder.words(e.fields).tolist()))
                   for e in parse_all("item_attributes", attributes)}  # fmt: skip
    published = parse_all("items_published", items)
    vectors = two_tower(0).item_tower.embed([e.fields for e in published]).numpy()
    embeddings = {e.item_id: (embedding_version(e.ts_ms), v) for e, v in zip(published, vectors, strict=True)}
    return {
        "features": rows,
        "eligibility": eligibility,
        "embeddings": embeddings,
        "late": late,
        "dropped": dropped,
    }


def _read_until(
    servers: str, topic: str, expected: dict[str, Any], timeout_s: float, job: Driver
) -> list[Any]:
    """Committed delta records (checkpoint markers left out), read until every expected delta is there."""
    consumer = kafka_helpers.assigned_consumer(servers, topic, "read_committed")
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    want = len(expected["features"]) + len(expected["eligibility"]) + len(expected["embeddings"])
    try:
        while time.monotonic() < deadline:
            records += [r for r in kafka_helpers.drain(consumer, timeout_s=1) if not is_marker(r.value)]
            if len(_distinct(records)) >= want:
                records += [r for r in kafka_helpers.drain(consumer, timeout_s=2) if not is_marker(r.value)]
                return records
    finally:
        consumer.close()
    job.fail(f"{len(_distinct(records))} of {want} expected deltas committed within {timeout_s} s")
    return records


def _distinct(records: list[Any]) -> set[tuple[int, int, int]]:
    deltas = [d for r in records for d in decode_deltas(r.value, LAYOUT)]
    return {(d.item_id, d.region, d.version) for d in deltas}


def _check_deltas(records: list[Any], expected: dict[str, Any]) -> None:
    assert all(r.key == str(decode_deltas(r.value, LAYOUT)[0].item_id).encode() for r in records), (
        "keyed by item id"
    )
    assert feature_rows([r.value for r in records], LAYOUT) == expected["features"]
    batch = decode_batch([r.value for r in records], LAYOUT)
    part = batch.kind_slice(DeltaKind.ELIGIBILITY)
    eligibility = {(int(i), int(v), tuple(w.tolist()))
                   for i, v, w in zip(batch.item_id[part], batch.version[part], batch.eligibility_words, strict=True)}  # fmt: skip
    assert eligibility == expected["eligibility"]
    part = batch.kind_slice(DeltaKind.EMBEDDING)
    got = {int(i): (int(v), int(m), e) for i, v, m, e in
           zip(batch.item_id[part], batch.version[part], batch.model_version[part], batch.embeddings, strict=True)}  # fmt: skip
    assert got.keys() == expected["embeddings"].keys()
    for item, (version, vector) in expected["embeddings"].items():
        assert got[item][:2] == (version, 1), "versioned by publish time, stamped with model version 1"
        np.testing.assert_allclose(got[item][2], vector, rtol=0, atol=1e-6)


def _check_applied(records: list[Any], expected: dict[str, Any]) -> None:
    """The committed stream and the oracle's deltas, applied to fresh models, give the same rows."""
    live = IndexModel(LAYOUT, model_version=1)
    live.apply(decode_batch([r.value for r in records], LAYOUT))
    oracle = IndexModel(LAYOUT, model_version=1)
    oracle.apply(batch_of(_oracle_deltas(expected), LAYOUT))
    for item in ITEMS:
        a, b = live.item(item), oracle.item(item)
        assert a is not None and b is not None
        assert (a["features"], a["versions"]) == (b["features"], b["versions"]), item
        assert np.array_equal(a["eligibility"], b["eligibility"]), item
        np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=0, atol=1e-6)


def _oracle_deltas(expected: dict[str, Any]) -> list[Any]:
    from freshet.deltas import Delta
    from freshet.layout import REGION_ELIGIBILITY, REGION_EMBEDDING
    from freshet.versions import version_time_ms

    deltas = [
        Delta(DeltaKind.FEATURE, i, r, v, t, np.array([x], np.float32))
        for i, r, v, t, x in expected["features"]
    ]
    deltas += [Delta(DeltaKind.ELIGIBILITY, i, REGION_ELIGIBILITY, v, version_time_ms(v), np.array(w, np.int64))
               for i, v, w in expected["eligibility"]]  # fmt: skip
    deltas += [Delta(DeltaKind.EMBEDDING, i, REGION_EMBEDDING, v, version_time_ms(v), e, 1)
               for i, (v, e) in expected["embeddings"].items()]  # fmt: skip
    return deltas


def _counters(job: Driver, infix: str, timeout_s: float = 30) -> dict[str, int]:
    """Non-zero operator counters whose name holds ``infix`` (e.g. ``.rejected_``), summed over subtasks, by the
    rest of their name; read until two reads agree (the REST API refreshes metrics every half second here)."""
    previous: dict[str, int] | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counted = _read_counters(job, infix)
        if counted and counted == previous:
            return counted
        previous = counted
        time.sleep(1)
    return previous or {}


def _read_counters(job: Driver, infix: str) -> dict[str, int]:
    counted: dict[str, int] = {}
    for vertex in job.rest("")["vertices"]:
        url = f"{job.rest_url}/jobs/{job.job_id}/vertices/{vertex['id']}/metrics"
        wanted = [m["id"] for m in _get(url) if infix in m["id"]]
        for metric in _get(f"{url}?get={','.join(wanted)}") if wanted else []:
            name = metric["id"].rsplit(infix, 1)[1]
            counted[name] = counted.get(name, 0) + int(float(metric["value"]))
    return {name: n for name, n in counted.items() if n}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)
