"""The smoke-test job, run in its own process by ``test_flink_smoke.py`` (so its JVM dies with it).

Kafka topic (raw key, raw bytes value) → Python map (a binary transform, key kept) → ``KeyedBytesSink``
(exactly once). Prints one JSON line ``{"job_id", "rest_url"}`` once the job runs, then waits until stdin
closes, cancels the job, prints ``{"cancelled", "status"}`` and exits.

    python tests/flink_smoke_job.py BOOTSTRAP SOURCE_TOPIC SINK_TOPIC TXN_PREFIX WORK_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flink_jobs import runtime
from flink_jobs.driver import stop_children, wait_for_rest, wait_until_terminal
from flink_jobs.sinks import KeyedBytesSink, keyed_bytes_row, keyed_bytes_table, keyed_bytes_type

if TYPE_CHECKING:
    pass

# No periodic checkpoint during the test (initial delay = min pause = interval): the test triggers the one
# checkpoint it needs through the REST API, so "before" and "after" that checkpoint are under its control.
CHECKPOINT_INTERVAL_MS = 300_000
TRANSACTION_TIMEOUT_MS = 600_000


def transform(value: bytes) -> bytes:
    """The job's visible work on each value: reversed, framed by bytes that are not valid UTF-8."""
    return b"\xff\x00" + value[::-1] + b"\x80"


def source_ddl(bootstrap_servers: str, topic: str) -> str:
    """A Kafka source table with a raw ``STRING`` key and a raw ``BYTES`` value, read from the beginning."""
    return f"""
        CREATE TEMPORARY TABLE source (item_id STRING, payload BYTES) WITH (
          'connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = '{bootstrap_servers}',
          'scan.startup.mode' = 'earliest-offset',
          'key.format' = 'raw', 'key.fields' = 'item_id',
          'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY')"""


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("bootstrap", "source_topic", "sink_topic", "txn_prefix", "work_dir"):
        parser.add_argument(name)
    args = parser.parse_args()
    work_dir = Path(args.work_dir)
    settings = runtime.FlinkSettings(
        checkpoint_interval_ms=CHECKPOINT_INTERVAL_MS,
        checkpoint_min_pause_ms=CHECKPOINT_INTERVAL_MS,
        checkpoint_dir=work_dir / "checkpoints",
        log_dir=work_dir / "flink-log",
    )
    _, t_env = runtime.table_environment(settings)
    t_env.execute_sql(source_ddl(args.bootstrap, args.source_topic))
    sink = KeyedBytesSink(
        args.sink_topic,
        args.bootstrap,
        args.txn_prefix,
        transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        checkpoint_interval_ms=CHECKPOINT_INTERVAL_MS,
    )
    sink.register(t_env, "sink")
    rows = t_env.to_data_stream(t_env.from_path("source"))
    out = rows.map(lambda row: keyed_bytes_row(row[0], transform(row[1])), output_type=keyed_bytes_type())
    result = keyed_bytes_table(t_env, out).execute_insert("sink")
    job_client = result.get_job_client()
    job_id = str(job_client.get_job_id())
    print(json.dumps({"job_id": job_id, "rest_url": wait_for_rest(job_id, settings.rest_ports)}), flush=True)
    sys.stdin.read()  # the test closes our stdin when it is done
    job_client.cancel().result()
    print(json.dumps({"cancelled": job_id, "status": wait_until_terminal(job_client)}), flush=True)
    stop_children()


if __name__ == "__main__":
    main()
