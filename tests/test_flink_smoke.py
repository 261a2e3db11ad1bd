"""EXACTLY_ONCE round trip: a PyFlink job on the local MiniCluster reads a topic of the embedded broker and writes
keyed records (raw bytes values) to another; a read_committed consumer sees them only once a checkpoint commits.

How "only after a checkpoint" is proven without luck or broker quirks: periodic checkpoints are pushed beyond the
test (interval = min pause = 5 min), so the sink's first transaction stays open until the test itself triggers a
checkpoint through the REST API. Before that, a read_uncommitted consumer sees every output record (so the job
has written them), while a read_committed consumer, whose fetches report the same high watermark, receives none,
and the REST API confirms that no checkpoint has completed. After the triggered checkpoint completes, the
read_committed consumer receives exactly the expected records: right keys, values, and one partition per key.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kafka_helpers
import pytest
from flink_driver import DriverProcess, stop_group
from flink_smoke_job import CHECKPOINT_INTERVAL_MS, transform
from kafka.partitioner.default import murmur2

from flink_jobs import connector
from flink_jobs.sinks import unique_transactional_id_prefix
from freshet.broker import EmbeddedBroker

pytestmark = [pytest.mark.flink, pytest.mark.kafka]

N_RECORDS, N_KEYS, PARTITIONS = 60, 12, 3
DRIVER = Path(__file__).with_name("flink_smoke_job.py")


def _require_flink() -> None:
    """Fail (never skip) with the command that installs whatever is missing."""
    if importlib.util.find_spec("pyflink") is None:
        pytest.fail("PyFlink is not installed: run `./dev setup`", pytrace=False)
    if shutil.which("java") is None:
        pytest.fail(
            "no `java` on PATH: install a Java 17 JDK (e.g. `apt-get install openjdk-17-jdk`)", pytrace=False
        )
    try:
        connector.jar_paths()
    except connector.ConnectorJarError as exc:
        pytest.fail(str(exc), pytrace=False)


class SmokeJob(DriverProcess):
    """The driver process of ``flink_smoke_job.py`` and the REST API of the job it submitted."""

    def trigger_checkpoint(self, timeout_s: float = 60) -> int:
        """Trigger one checkpoint through the REST API and wait until it completed; returns its id."""
        trigger_id = self.rest("/checkpoints", body={})["request-id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = self.rest(f"/checkpoints/{trigger_id}")
            if answer["status"]["id"] == "COMPLETED":
                operation = answer.get("operation", {})
                if "failure-cause" in operation:
                    self.fail(f"the triggered checkpoint failed: {operation['failure-cause']}")
                return int(operation["checkpointId"])
            time.sleep(0.2)
        return int(self.fail(f"the triggered checkpoint did not complete within {timeout_s} s"))

    def cancel(self) -> dict[str, Any]:
        """Close the driver's stdin: it cancels the job, reports the final status and exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        message = self.next_message(timeout_s=60)
        self.proc.wait(timeout=60)
        return message


@contextlib.contextmanager
def running_job(bootstrap: str, source: str, sink: str, work_dir: Path) -> Iterator[SmokeJob]:
    """Start the driver in its own process group; whatever happens, leave no process of it behind."""
    argv = [
        sys.executable,
        str(DRIVER),
        bootstrap,
        source,
        sink,
        unique_transactional_id_prefix("smoke"),
        str(work_dir),
    ]
    with (work_dir / "driver.err").open("w") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)  # fmt: skip
    try:
        yield SmokeJob(proc, work_dir)
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        left = stop_group(proc.pid)
        proc.wait()
    assert not left, (
        f"processes of the Flink job outlived it and were killed: {left}"
    )  # only if all else passed


def test_keyed_exactly_once_output_is_visible_only_after_a_checkpoint(
    broker: EmbeddedBroker, make_topic: Any, tmp_path: Path
) -> None:
    _require_flink()
    servers = broker.bootstrap_servers
    source, sink = make_topic(PARTITIONS, "in"), make_topic(PARTITIONS, "out")
    sent = [(str(i % N_KEYS).encode(), bytes([i, 0, 255, i % 5])) for i in range(N_RECORDS)]
    kafka_helpers.produce(servers, source, sent)
    expected = sorted((key, transform(value)) for key, value in sent)

    with running_job(servers, source, sink, tmp_path) as job:
        _assert_checkpointing_configured(job)
        written = kafka_helpers.read_topic(
            servers, sink, isolation_level="read_uncommitted", min_records=N_RECORDS, timeout_s=90
        )
        assert sorted((r.key, r.value) for r in written) == expected, "the job wrote its output (uncommitted)"

        hidden, highwater = _read_committed_with_highwater(servers, sink, timeout_s=3)
        counts = job.rest("/checkpoints")[
            "counts"
        ]  # asked after that read: no checkpoint had completed during it
        assert highwater >= N_RECORDS, "the read_committed consumer's fetches saw the records exist"
        assert hidden == [], "uncommitted output must be invisible to read_committed"
        assert counts["completed"] == 0, counts

        checkpoint_id = job.trigger_checkpoint()
        assert checkpoint_id == 1, "ids count every checkpoint attempt: none was made before ours"
        assert job.rest("/checkpoints")["counts"]["completed"] == 1
        committed = kafka_helpers.read_topic(servers, sink, isolation_level="read_committed", timeout_s=30)
        assert sorted((r.key, r.value) for r in committed) == expected, "committed with checkpoint 1"
        _assert_keyed_partitioning(committed)

        final = job.cancel()
        assert final == {"cancelled": job.job_id, "status": "CANCELED"}
        retained = tmp_path / "checkpoints" / job.job_id / f"chk-{checkpoint_id}" / "_metadata"
        assert retained.is_file(), "the checkpoint is retained on cancel, in the configured directory"


def _assert_checkpointing_configured(job: SmokeJob) -> None:
    config = job.rest("/checkpoints/config")
    assert config["mode"] == "exactly_once", config
    assert config["interval"] == CHECKPOINT_INTERVAL_MS, config
    assert config["externalization"]["delete_on_cancellation"] is False, config


def _read_committed_with_highwater(servers: str, topic: str, timeout_s: float) -> tuple[list[Any], int]:
    consumer = kafka_helpers.assigned_consumer(servers, topic, "read_committed")
    try:
        records = kafka_helpers.drain(consumer, timeout_s=timeout_s)
        return records, sum(consumer.highwater(tp) or 0 for tp in consumer.assignment())
    finally:
        consumer.close()


def _assert_keyed_partitioning(records: list[Any]) -> None:
    """One partition per key, and it is Kafka's default one (murmur2 of the key), as any Kafka client computes."""
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for record in records:
        partitions[record.key].add(record.partition)
    expected = {key: {(murmur2(key) & 0x7FFFFFFF) % PARTITIONS} for key in partitions}
    assert partitions == expected
    assert len({p for ps in partitions.values() for p in ps}) > 1, "12 keys should spread over the partitions"
