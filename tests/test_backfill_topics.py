"""Backfill straight from the raw topics (``--events kafka://``) and ``freshet job export-events``.

The synthetic feed is produced to real topics on the embedded broker and also written as an event-log
directory; backfill of the topics must equal backfill of the directory. What these tests prove holds on
Apache Kafka too: nothing here rests on the embedded broker's quirks (aborted records, ``end_offsets``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka_helpers import produce

from flink_jobs.raw_topics import BoundedTopicRead, RawTopicsError, export_raw_topics
from freshet.broker import EmbeddedBroker, free_port
from freshet.cli import main as cli_main
from freshet.feedgen import FeedConfig, FeedGenerator, RawRecord
from freshet.offline import topics as topics_module
from freshet.offline.backfill import backfill
from freshet.offline.eventlog import read_values, topic_files, write_event_log
from freshet.offline.topics import TopicsError, parse_events
from freshet.publish import publish_model
from freshet.spec import FeatureSet, load_feature_set
from freshet.training import build_model

FEATURE_DEFS = Path(__file__).resolve().parent.parent / "feature_defs"
T0_MS = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000
FEED = FeedConfig(seed=5, users=100, posts_per_s=0.5, engagements_per_s=5.0, attribute_changes_per_s=0.3,
                  recent_posts=100, late_share=0.02, late_by_ms=45_000, malformed_share=0.02)  # fmt: skip
UNTIL_MS = T0_MS + 1_000_000

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def feature_set() -> FeatureSet:
    return load_feature_set(FEATURE_DEFS)


@pytest.fixture(scope="module")
def records() -> list[RawRecord]:
    return list(FeedGenerator(FEED, start_ms=T0_MS).records(1_200))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, feature_set: FeatureSet) -> Path:
    root = tmp_path_factory.mktemp("models")
    publish_model(root, "two_tower", build_model(feature_set, buckets=256, hidden=16),
                  layout_hash=feature_set.layout().layout_hash)  # fmt: skip
    return root


@pytest.fixture
def fed_topics(
    broker: EmbeddedBroker, make_topic: Callable[..., str], records: list[RawRecord], feature_set: FeatureSet
) -> dict[str, str]:
    """Each declared source topic as a fresh single-partition topic holding the feed; declared → actual."""
    mapping = {}
    for source in feature_set.sources:
        actual = mapping[source.topic] = make_topic(1, source.topic)
        produce(
            broker.bootstrap_servers, actual, [(r.key, r.value) for r in records if r.topic == source.topic]
        )
    return mapping


def topic_options(mapping: dict[str, str]) -> list[str]:
    return [item for declared, actual in mapping.items() for item in ("--topic", f"{declared}={actual}")]


def run_backfill(events: str, models: Path, out: Path, *extra: str) -> int:
    return cli_main(["backfill", "--defs", str(FEATURE_DEFS), "--events", events, "--until", str(UNTIL_MS),
                     "--models", str(models), "--out", str(out), "--quiet", *extra])  # fmt: skip


def unwrapped(text: str) -> str:
    """A message as one line (rich wraps what it prints to the terminal's width)."""
    return " ".join(text.split())


# ---------------------------------------------------------------- equal to the directory


def test_backfill_from_the_topics_equals_backfill_from_the_same_records_as_a_directory(
    tmp_path: Path,
    broker: EmbeddedBroker,
    fed_topics: dict[str, str],
    records: list[RawRecord],
    feature_set: FeatureSet,
    models: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_event_log(records, tmp_path / "events")
    expected = backfill(feature_set, tmp_path / "events", UNTIL_MS, models).summary()
    assert sum(sum(s["rejected"].values()) for s in expected["sources"].values()) > 10, (
        "the feed has malformed records"
    )

    code = run_backfill(
        f"kafka://{broker.bootstrap_servers}", models, tmp_path / "snaps", *topic_options(fed_topics)
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["digest"] == expected["digest"]
    assert summary["sources"] == expected["sources"]  # the same records read, rejected and counted alike
    assert "records produced later are not included" in summary["kafka"]["read"]
    produced = {d: sum(r.topic == d for r in records) for d in fed_topics}
    assert {d: t["records"] for d, t in summary["kafka"]["topics"].items()} == produced
    assert {d: t["partitions"] for d, t in summary["kafka"]["topics"].items()} == {
        d: {"0": [0, n]} for d, n in produced.items()
    }


def test_export_events_writes_a_log_that_backfills_alike(
    tmp_path: Path,
    broker: EmbeddedBroker,
    fed_topics: dict[str, str],
    records: list[RawRecord],
    feature_set: FeatureSet,
    models: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "exported"
    code = cli_main(["job", "export-events", "--bootstrap", broker.bootstrap_servers, "--out", str(out),
                     "--defs", str(FEATURE_DEFS), *topic_options(fed_topics)])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["topics"]) == set(fed_topics)
    for declared in fed_topics:  # logged under the declared name, value for value, in the topic's order
        got = [v for chunk in read_values(topic_files(out, declared)) for v in chunk]
        assert got == [r.value for r in records if r.topic == declared]
    write_event_log(records, tmp_path / "events")
    expected = backfill(feature_set, tmp_path / "events", UNTIL_MS, models).model.digest()
    assert backfill(feature_set, out, UNTIL_MS, models).model.digest() == expected
    again = cli_main(["job", "export-events", "--bootstrap", broker.bootstrap_servers, "--out", str(out),
                      "--defs", str(FEATURE_DEFS), *topic_options(fed_topics)])  # fmt: skip
    assert again == 2, "a second export into the same log would hold every record twice"
    assert "already holds a log of" in unwrapped(capsys.readouterr().err)


def test_raw_values_are_kept_byte_for_byte(
    tmp_path: Path, broker: EmbeddedBroker, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(1)
    values = [b'{"ok": 1}', b"not json\nwith a newline", b"\xff\xfe\x00binary", b"", b"{}"]
    produce(broker.bootstrap_servers, topic, [(None, v) for v in values])
    export_raw_topics(broker.bootstrap_servers, {"engagement": topic}, tmp_path)
    assert [v for chunk in read_values(topic_files(tmp_path, "engagement")) for v in chunk] == values


# ---------------------------------------------------------------- the bound and the order


def send(bootstrap: str, topic: str, records: list[tuple[int, bytes]]) -> None:
    """``(partition, value)`` pairs, each to the partition named."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for partition, value in records:
            producer.send(topic, value=value, partition=partition)
        producer.flush()
    finally:
        producer.close()


def test_records_produced_after_the_read_starts_are_not_read(
    broker: EmbeddedBroker, make_topic: Callable[..., str]
) -> None:
    """Partition 0 takes many polls to read, slowly, so fetches of the other partition keep coming back while
    newer records arrive on both: neither partition's newer records are read."""
    topic, pad = make_topic(2), b"x" * 200
    send(
        broker.bootstrap_servers,
        topic,
        [(0, b"before-%d-" % i + pad) for i in range(10_000)] + [(1, b"before-1")],
    )
    with BoundedTopicRead(broker.bootstrap_servers, topic) as read:
        bound = read.bounds
        send(broker.bootstrap_servers, topic, [(p, b"after-%d-" % i) for i in range(500) for p in (0, 1)])
        got = []
        for record in read.records():
            got.append(record.value)
            if len(got) % 1_000 == 0:
                time.sleep(0.2)
    assert bound == {0: (0, 10_000), 1: (0, 1)}
    assert sorted(got) == sorted([b"before-%d-" % i + pad for i in range(10_000)] + [b"before-1"])


def test_partitions_merge_by_timestamp_and_each_keeps_its_own_order(
    broker: EmbeddedBroker, make_topic: Callable[..., str]
) -> None:
    """A merge, not a sort: partition 0's timestamps go back (5, 1, 6) and it still reads in offset order."""
    topic = make_topic(3)
    sent = {0: [5_000, 1_000, 6_000], 1: [2_000, 3_000], 2: [2_000, 7_000]}
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    try:
        for partition, stamps in sent.items():
            for ts in stamps:
                producer.send(topic, value=b"p%d@%d" % (partition, ts), partition=partition, timestamp_ms=ts)
        producer.flush()
    finally:
        producer.close()
    with BoundedTopicRead(broker.bootstrap_servers, topic) as read:
        got = [r.value.decode() for r in read.records()]
    # ties on the timestamp go to the lower partition
    assert got == ["p1@2000", "p2@2000", "p1@3000", "p0@5000", "p0@1000", "p0@6000", "p2@7000"]


# ---------------------------------------------------------------- clear errors


def test_an_unreachable_broker_fails_fast_naming_the_address(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert run_backfill(f"kafka://{address}", models, tmp_path, "--kafka-timeout", "2") == 2
    assert time.monotonic() - started < 20
    err = unwrapped(capsys.readouterr().err)
    assert address in err and "no Kafka broker answered within 2.0 s" in err


def test_a_missing_topic_is_named(
    tmp_path: Path,
    broker: EmbeddedBroker,
    fed_topics: dict[str, str],
    models: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mapping = {**fed_topics, "engagement": "no.such.topic"}
    assert run_backfill(f"kafka://{broker.bootstrap_servers}", models, tmp_path, *topic_options(mapping)) == 2
    assert "no topic 'no.such.topic'" in unwrapped(capsys.readouterr().err)
    with pytest.raises(RawTopicsError, match=r"no topic 'no\.such\.topic'"):
        BoundedTopicRead(broker.bootstrap_servers, "no.such.topic", timeout_s=2)


@pytest.mark.parametrize("text", ["kafka://", "kafka://host", "kafka://:9092", "kafka://h:p"])
def test_a_malformed_kafka_address_is_refused(text: str) -> None:
    with pytest.raises(TopicsError, match="want kafka://HOST:PORT"):
        parse_events(text)


def test_a_missing_adapter_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics_module, "ADAPTER", "flink_jobs.no_such_adapter")
    with pytest.raises(TopicsError, match=r"needs the flink_jobs\.no_such_adapter adapter"):
        topics_module.export(topics_module.KafkaEvents("127.0.0.1:9"), {"engagement": "engagement"}, tmp_path)


def test_the_core_command_line_loads_no_kafka_client() -> None:
    """``freshet backfill`` reaches Kafka only through the adapter, imported when a topic is read."""
    code = ("import sys, freshet.cli, freshet.offline.topics, freshet.offline.commands; freshet.cli.build_parser(); "
            "assert not [m for m in sys.modules if m == 'kafka' or m.startswith('kafka.')], 'kafka loaded'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
