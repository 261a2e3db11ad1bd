"""A Flink job's driver process as the tests see it: JSON lines on stdout, its REST API, its process group.

Shared by the smoke test and the delta-job tests: both run the job in a child process (so its JVM dies with
it), read the messages the driver prints, ask Flink's REST API about the job, and make sure no process of
the group outlives the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest


class DriverProcess:
    """A running driver: waits for its first message (``job_id``, ``rest_url``) on construction."""

    def __init__(self, proc: subprocess.Popen[str], work_dir: Path, start_timeout_s: float = 120) -> None:
        self.proc, self.work_dir = proc, work_dir
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        started = self.next_message(timeout_s=start_timeout_s)
        self.job_id: str = started["job_id"]
        self.rest_url: str = started["rest_url"] or self.fail("the job's REST API was not found")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def fail(self, message: str) -> Any:
        log = (self.work_dir / "driver.err").read_text(errors="replace")[-4000:]
        pytest.fail(
            f"{message}\n--- driver stderr (tail) ---\n{log}\nFlink logs: {self.work_dir / 'flink-log'}"
        )

    def next_message(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = self._lines.get(timeout=0.5)
                if line.startswith("{"):
                    return dict(json.loads(line))
            if self.proc.poll() is not None and self._lines.empty():
                self.fail(f"the job driver exited with status {self.proc.returncode}")
        return dict(self.fail(f"no message from the job driver within {timeout_s} s"))

    def rest(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET (or POST ``body``) ``/jobs/<id><path>`` on the job's REST API."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.rest_url}/jobs/{self.job_id}{path}", data=data)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.load(response))


def live_processes_in_group(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` and that are not zombies (Linux ``/proc``)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
    return pids


def stop_group(pgid: int, timeout_s: float = 20) -> list[int]:
    """Wait for every process of the group (driver, its JVM, Python workers) to end, then kill leftovers.

    Returns the pids that had to be killed: a test asserts it is empty.
    """
    deadline = time.monotonic() + timeout_s
    while (left := live_processes_in_group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return left
