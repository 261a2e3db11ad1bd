"""One definition, two computations: the real delta job feeding a real replica, and backfill over the same logged
events, end at the same model digest — proven by ``freshet verify`` between the replica and the backfill.

What makes the live run deterministic, so that equality is a fair demand:

* every source topic has one partition, and the event log holds each topic's records in the order produced;
* no engagement event is ever more than ~3 s behind the greatest time before it (the feed's jitter; the
  declared out-of-orderness is 5 s), so whenever Flink's periodic watermark falls no event is behind it: the
  live windows fire as backfill's per-event watermark fires them. A last engagement event days later pushes
  the watermark past every window; backfill's ``--until`` is that watermark;
* the job embeds one item per forward pass (``--embed-batch-size 1``) and backfill too (``--embed-batch 1``):
  the item tower's float32 results depend on the batch it runs in.

Malformed records go to the dead-letter topic live and are counted by backfill; neither changes the model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from test_job_flink import _produce_to_partition, _require_flink, running
from test_job_logic import two_tower
from test_serving_process import ServeProcess

from freshet.broker import EmbeddedBroker
from freshet.cli import main as cli_main
from freshet.feedgen import (
    TOPIC_ATTRIBUTES,
    TOPIC_ENGAGEMENT,
    TOPIC_ITEMS,
    FeedConfig,
    FeedGenerator,
    RawRecord,
)
from freshet.offline.eventlog import write_event_log
from freshet.publish import publish_model
from freshet.spec import load_feature_set
from serving.testing import wait_until

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.http]

FEATURE_DEFS = Path(__file__).resolve().parent.parent / "feature_defs"
T0_MS = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000
FEED = FeedConfig(seed=9, users=300, posts_per_s=1.0, engagements_per_s=12.0, attribute_changes_per_s=0.5,
                  recent_posts=300, late_share=0.0, malformed_share=0.005)  # fmt: skip
SECONDS = 3_900  # past the first hour: the 1h windows fire too
SENTINEL_MS = T0_MS + 5 * 86_400_000


def feed() -> list[RawRecord]:
    """The synthetic feed, then one engagement event days later that pushes the watermark past every window."""
    records = list(FeedGenerator(FEED, start_ms=T0_MS).records(SECONDS))
    sentinel = {"item_id": 999_999_999, "ts": SENTINEL_MS, "user_id": 1, "action": "view", "dwell_ms": 1}
    return [*records, RawRecord(TOPIC_ENGAGEMENT, b"999999999", json.dumps(sentinel).encode(), SENTINEL_MS)]


def test_the_live_job_and_replica_end_where_backfill_ends(
    broker: EmbeddedBroker, make_topic: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _require_flink()
    layout = load_feature_set(FEATURE_DEFS).layout()
    models = tmp_path / "models"
    publish_model(models, "two_tower", two_tower(0), layout_hash=layout.layout_hash)
    topics = {
        t: make_topic(1, t.replace(".", "-")) for t in (TOPIC_ENGAGEMENT, TOPIC_ITEMS, TOPIC_ATTRIBUTES)
    }
    topics["engagement.late"] = make_topic(1, "late")
    deltas, dlq = make_topic(3, "deltas"), make_topic(1, "dlq")

    records = feed()
    write_event_log(records, tmp_path / "events")
    for declared, actual in topics.items():
        values = [r.value for r in records if r.topic == declared]
        if values:
            _produce_to_partition(broker.bootstrap_servers, actual, values)

    until_ms = SENTINEL_MS - 5_000 - 1  # the engagement watermark after the last event
    backfill = ["backfill", "--defs", str(FEATURE_DEFS), "--events", str(tmp_path / "events"), "--until",
                str(until_ms), "--models", str(models), "--out", str(tmp_path / "backfill"), "--embed-batch", "1",
                "--quiet"]  # fmt: skip
    assert cli_main(backfill) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sources"]["engagement"]["rejected"], "the feed's malformed records were counted"
    assert sum(summary["too_late"].values()) == 0, "the feed is built so that no event is late"

    replica = ServeProcess(["--bootstrap-servers", broker.bootstrap_servers, "--delta-topic", deltas,
                            "--feature-defs", str(FEATURE_DEFS), "--model-dir", str(models),
                            "--snapshot-dir", str(tmp_path / "replica"), "--snapshot-every-s", "0",
                            "--snapshot-every-deltas", "0"], tmp_path / "serve.log")  # fmt: skip
    job = [sys.executable, "-m", "freshet.cli", "job", "run", "--bootstrap", broker.bootstrap_servers,
           "--defs", str(FEATURE_DEFS), "--models", str(models), "--delta-topic", deltas, "--dlq-topic", dlq,
           "--checkpoint-dir", str(tmp_path / "checkpoints"), "--log-dir", str(tmp_path / "flink-log"),
           "--job-name", f"test-{deltas}", "--model-poll-ms", "500", "--embed-batch-size", "1",
           "--embed-linger-ms", "50"]  # fmt: skip
    for declared, actual in topics.items():
        job += ["--topic", f"{declared}={actual}"]
    verify = [
        "verify",
        "--defs",
        str(FEATURE_DEFS),
        f"http://127.0.0.1:{replica.port}",
        str(tmp_path / "backfill"),
    ]
    try:
        with running(job, tmp_path):
            try:
                quick = [*verify, "--probe-limit", "0"]  # while it catches up, the digest is enough
                wait_until(lambda: _verified(quick, capsys), timeout_s=300, interval_s=3,
                           what="the replica's digest to equal the backfill's")  # fmt: skip
            except TimeoutError:
                cli_main(verify)
                pytest.fail("replica and backfill differ:\n" + capsys.readouterr().out)
            assert cli_main(verify) == 0
            assert capsys.readouterr().out == f"equal (digest {summary['digest']})\n"
    finally:
        replica.stop()


def _verified(argv: list[str], capsys: pytest.CaptureFixture[str]) -> bool:
    """``freshet verify`` exits 0 (its output is dropped: the replica may still be catching up)."""
    code = cli_main(argv)
    capsys.readouterr()
    return code == 0
