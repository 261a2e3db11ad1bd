"""The demo's proof that serving equals backfill: read the job's watermark, drain the pipeline, compare.

The demo logs every raw record it sends (``freshet.offline.eventlog`` layout). For the live replica and a
backfill of that log to hold the same tensors, two things must not depend on timing:

* **late events.** The job decides "late" against the watermark at the window operator, which Flink emits
  every 200 ms and Python bundles hold back; backfill uses the watermark after every event before it.
  Events within the out-of-orderness bound are decided the same under both (no window they join has
  fired). An event behind the watermark is not: so the feed holds such events back, waits until the
  window operator's input watermark (Flink REST) is exactly what backfill computes after everything sent
  so far, and only then sends them (``JobWatermark.wait_for``).
* **the end.** Backfill computes the state at a watermark ``until``. At the end the demo sends one engagement
  event far in event time (``DRAIN_ITEM_ID``) that pushes the watermark past every window, waits for the
  replica to apply everything, and backfills with ``--until`` = that event's watermark: every window has
  fired on both sides and no attribute or post is cut off.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from freshet.feedgen import TOPIC_ENGAGEMENT, RawRecord
from freshet.watermarks import bounded_out_of_orderness

#: the item of the end-of-feed event; far above the feed's ids, so it touches no real item
DRAIN_ITEM_ID = 999_999_999
#: how far past the last event the end-of-feed event lies: beyond every declared window and lateness
DRAIN_AFTER_MS = 3 * 86_400_000
WINDOW_VERTEX = "windows engagement"


class JobWatermark:
    """The input watermark of the job's engagement window operator, read from the Flink REST API."""

    def __init__(self, job_log: Path) -> None:
        self._job_log = job_log
        self._url: str | None = None
        self._http = httpx.Client(timeout=5.0)

    def current_ms(self) -> int | None:
        """The window operator's input watermark now (the lowest over its subtasks), or None if unknown."""
        url = self._url or self._find()
        if url is None:
            return None
        try:
            values = [
                int(m["value"]) for m in self._http.get(url).json() if m["id"].endswith("InputWatermark")
            ]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        return min(values) if values else None

    def wait_for(self, watermark_ms: int, stop: threading.Event, timeout_s: float = 60.0) -> bool:
        """Block until the watermark reached ``watermark_ms`` (True), or ``stop`` is set or time ran out."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            current = self.current_ms()
            if current is not None and current >= watermark_ms:
                return True
            stop.wait(0.1)
        return False

    def close(self) -> None:
        self._http.close()

    def _find(self) -> str | None:
        """The watermarks URL of the window vertex, from the job driver's JSON line and the job's vertices."""
        record = _job_record(self._job_log)
        if record is None:
            return None
        base = f"{record['rest_url']}/jobs/{record['job_id']}"
        try:
            vertices = self._http.get(base).json()["vertices"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        found = [v["id"] for v in vertices if v["name"].startswith(WINDOW_VERTEX)]
        self._url = f"{base}/vertices/{found[0]}/watermarks" if found else None
        return self._url


def _job_record(job_log: Path) -> dict[str, str] | None:
    """The job driver's first stdout line (``job_id``, ``rest_url``), once it has printed it."""
    try:
        lines = job_log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("{") and '"rest_url"' in line:
            return dict(json.loads(line))
    return None


@dataclass
class LateGate:
    """Splits what the feed sends into records backfill and the job decide alike, and those behind the
    watermark, which wait until the job's watermark is exactly backfill's (see the module docstring)."""

    max_out_of_orderness_ms: int
    max_ts_ms: int | None = None

    def split(self, records: list[RawRecord]) -> tuple[list[RawRecord], list[RawRecord]]:
        """(send now in this order, hold back): an engagement record behind the watermark so far is held."""
        now, held = [], []
        for record in records:
            if record.topic != TOPIC_ENGAGEMENT:
                now.append(record)
            elif self.max_ts_ms is not None and record.ts_ms <= self.watermark_ms():
                held.append(record)
            else:
                now.append(record)
                self.max_ts_ms = record.ts_ms if self.max_ts_ms is None else max(self.max_ts_ms, record.ts_ms)
        return now, held

    def watermark_ms(self) -> int:
        """The engagement watermark after everything sent now (what backfill gives the next event)."""
        return bounded_out_of_orderness(self.max_ts_ms, self.max_out_of_orderness_ms)


def drain_record(last_ts_ms: int) -> RawRecord:
    """The end-of-feed engagement event, ``DRAIN_AFTER_MS`` after ``last_ts_ms``."""
    ts = last_ts_ms + DRAIN_AFTER_MS
    doc = {"item_id": DRAIN_ITEM_ID, "ts": ts, "user_id": 0, "action": "view", "dwell_ms": 1}
    return RawRecord(TOPIC_ENGAGEMENT, str(DRAIN_ITEM_ID).encode(), json.dumps(doc).encode(), ts)


@dataclass(frozen=True)
class Comparison:
    """The commands that compare the replica with a backfill of the logged events."""

    defs: Path
    events: Path
    until_ms: int
    models: Path
    out: Path

    def backfill_argv(self) -> list[str]:
        # --embed-batch 1: the demo's job embeds one item per forward pass (float32 depends on the batch)
        return ["freshet", "backfill", "--defs", str(self.defs), "--events", str(self.events),
                "--until", str(self.until_ms), "--models", str(self.models), "--embed-batch", "1",
                "--out", str(self.out), "--quiet"]  # fmt: skip

    def verify_argv(self, replica: str) -> list[str]:
        return ["freshet", "verify", "--defs", str(self.defs), replica, str(self.out)]

    def lines(self, replica: str) -> list[str]:
        """The two commands as a user types them."""
        return [shlex.join(self.backfill_argv()), shlex.join(self.verify_argv(replica))]

    def settle(self, replica: str, timeout_s: float) -> tuple[int, str]:
        """Backfill, wait until ``replica``'s digest equals the backfill's (the last windows' deltas commit
        with the job's next checkpoint) or ``timeout_s`` passed, then verify in full: its exit code and
        output (backfill's on failure)."""
        done = _freshet(self.backfill_argv())
        if done.returncode != 0:
            return 2, f"backfill failed ({done.returncode}):\n{done.stderr[-2000:]}"
        deadline = time.monotonic() + timeout_s
        quick = [*self.verify_argv(replica), "--probe-limit", "0"]  # the digest alone, while it catches up
        while _freshet(quick).returncode != 0 and time.monotonic() < deadline:
            time.sleep(2.0)
        done = _freshet(self.verify_argv(replica))
        return done.returncode, (done.stdout + done.stderr).strip()


def _freshet(argv: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "freshet.cli", *argv[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
