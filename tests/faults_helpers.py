"""What the fault-injection tests (``tests/test_faults.py``) are built from: a stream whose applied end state
the oracle knows exactly, the job and replica processes, and kill points. The soak (``bench/faults.py``) runs
those tests over many seeds rather than importing this module (bench imports nothing from ``tests/``).

The stream is two rounds of engagement events on the five test items (none of which can be late: see
``tests/test_job_flink.py``), each closed by an event days later that pushes the watermark past every window,
plus the items' attribute changes. After round one the oracle knows the whole applied state; after round two
too. Every comparison is of applied state (the replica's digest), never of record counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job_streams import T0_MS, attribute_docs, encode_docs, engagement_docs, oracle_feature_rows
from test_job_flink import FS, ITEMS, LAYOUT, SENTINEL, Driver, Setup, _oracle_deltas, parse_all

from freshet.deltas import batch_of
from freshet.eligibility import EligibilityEncoder
from freshet.model import IndexModel
from freshet.snapshot import list_snapshots, load_snapshot
from freshet.versions import eligibility_version
from freshet.watermarks import watermarks_after_each

DAY_MS = 86_400_000
SENTINEL2 = json.dumps({"item_id": 999_998, "ts": T0_MS + 10 * DAY_MS, "user_id": 1, "action": "view",
                        "dwell_ms": 1}).encode()  # fmt: skip


@dataclass(frozen=True)
class Stream:
    round1: list[bytes]  # ends with SENTINEL (day 5)
    round2: list[bytes]  # from day 5, ends with SENTINEL2 (day 10)
    attributes: list[bytes]


def make_stream(seed: int, n1: int = 600, n2: int = 200) -> Stream:
    rng = random.Random(seed)
    first = encode_docs(engagement_docs(rng, ITEMS, n1, step_ms=30_000, disorder_ms=4_000))
    second = encode_docs(engagement_docs(rng, ITEMS, n2, start_ms=T0_MS + 5 * DAY_MS + 5_000, step_ms=30_000,
                                         disorder_ms=4_000))  # fmt: skip
    return Stream([*first, SENTINEL], [*second, SENTINEL2], encode_docs(attribute_docs(rng, ITEMS)))


def oracle_model(engagement: list[bytes], attributes: list[bytes]) -> IndexModel:
    """The applied state the job's deltas must produce from these raw events (no embeddings are sent)."""
    events = parse_all("engagement", engagement)
    delay = FS.source("engagement").watermark.max_out_of_orderness_ms
    rows, _, _ = oracle_feature_rows(
        FS, events, watermarks_after_each([e.ts_ms for e in events], delay), None
    )
    encoder = EligibilityEncoder.of(FS)
    eligibility = {(e.item_id, eligibility_version(e.ts_ms), tuple(encoder.words(e.fields).tolist()))
                   for e in parse_all("item_attributes", attributes)}  # fmt: skip
    model = IndexModel(LAYOUT, model_version=1)
    model.apply(
        batch_of(_oracle_deltas({"features": rows, "eligibility": eligibility, "embeddings": {}}), LAYOUT)
    )
    return model


def rows_wrong(got: IndexModel, want: IndexModel) -> int:
    """Items whose row differs (features, eligibility, versions), or that only one model has."""
    states = [m.export_state() for m in (got, want)]
    ids = {int(i) for s in states for i in s.item_ids[s.occupied]}
    wrong = 0
    for item in ids:
        a, b = got.item(item), want.item(item)
        if (
            a is None
            or b is None
            or (a["features"], a["versions"]) != (b["features"], b["versions"])
            or (a["eligibility"].tolist() != b["eligibility"].tolist())
        ):
            wrong += 1
    return wrong


def newest_snapshot_model(root: Path) -> IndexModel:
    return load_snapshot(list_snapshots(root)[0], LAYOUT)[0]


def latest_checkpoint(root: Path, job_id: str | None = None) -> Path | None:
    """The newest completed checkpoint of ``job_id`` (default: any job) under ``root`` (``<job>/chk-N/_metadata``)."""
    done = []
    for job in root.iterdir() if root.is_dir() else ():
        if job_id is not None and job.name != job_id:
            continue
        with contextlib.suppress(OSError):  # Flink deletes failed and subsumed chk-N while we look
            done += [((c / "_metadata").stat().st_mtime, c) for c in job.iterdir() if c.name.startswith("chk-")
                     and (c / "_metadata").is_file()]  # fmt: skip
    return max(done, default=(0.0, None))[1]


def pace(setup: Setup, values: list[bytes], seconds: float) -> threading.Thread:
    """Send engagement ``values`` spread over ``seconds`` (in ~10 chunks) from a thread."""

    def send() -> None:
        chunks = [
            values[i : i + max(1, len(values) // 10)]
            for i in range(0, len(values), max(1, len(values) // 10))
        ]
        for chunk in chunks:
            setup.produce(chunk)
            time.sleep(seconds / len(chunks))

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the process and its group at once (the driver, its JVM with the MiniCluster, Python workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def start_job(argv: list[str], work_dir: Path) -> Driver:
    work_dir.mkdir(parents=True, exist_ok=True)
    return Driver(argv, work_dir)


def restore_argv(checkpoint: Path) -> list[str]:
    return [sys.executable, "-m", "freshet.cli", "job", "restore", "--from", str(checkpoint)]


@contextlib.contextmanager
def reaped(procs: list[subprocess.Popen[Any]]) -> Iterator[list[subprocess.Popen[Any]]]:
    """Whatever happens, no process group started by the test outlives it."""
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
