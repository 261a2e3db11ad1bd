"""The local driver of a job: submit it to the MiniCluster of this process, report it, and end it cleanly.

The MiniCluster (and its web UI) lives in the JVM that PyFlink starts as a child of this process, so the
driver stays up while the job runs. It prints one JSON line on stdout (``job_id``, ``rest_url``,
``transactional_id_prefix``, ``job_record``) for tools and tests, and a human summary on stderr. SIGINT
or SIGTERM cancels the job (its last checkpoint is retained); a job stopped with a savepoint
(``freshet job stop``) ends the driver too. Either way the JVM and the Python workers are reaped before
the driver exits, so nothing outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flink_jobs import runtime

if TYPE_CHECKING:
    from pyflink.common import JobClient

    from flink_jobs.options import JobSettings


def run_attached(settings: JobSettings) -> int:
    """Submit the delta job here and wait until it ends or a signal asks to cancel it; 0 unless it failed."""
    from flink_jobs.deltas_job import submit
    from flink_jobs.options import job_record, write_job_record

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    client = submit(settings)
    job_id = str(client.get_job_id())
    record = write_job_record(settings, job_record(settings, job_id))
    rest = wait_for_rest(job_id, settings.flink.rest_ports)
    print(json.dumps({"job_id": job_id, "rest_url": rest, "transactional_id_prefix": settings.transactional_id_prefix,
                      "job_record": str(record)}), flush=True)  # fmt: skip
    print(f"freshet job {job_id} running; Flink web UI: {rest}\n"
          f"  checkpoints: {Path(settings.flink.checkpoint_dir) / job_id}\n"
          f"  stop with a savepoint: freshet job stop --job-id {job_id} --rest {rest}\n"
          f"  Ctrl-C cancels (the last checkpoint is retained: freshet job restore --from <chk dir>)",
          file=sys.stderr, flush=True)  # fmt: skip
    status = _until_ended_or_stopped(client, stop)
    print(json.dumps({"job_id": job_id, "status": status}), flush=True)
    stop_children()
    return 0 if status in ("CANCELED", "FINISHED") else 1


def _until_ended_or_stopped(client: JobClient, stop: threading.Event) -> str:
    """The job's final status; cancels it first if ``stop`` is set while it runs.

    The job's result is awaited on a thread from the start: a local MiniCluster shuts down as soon as its job
    ends (e.g. stopped with a savepoint by ``freshet job stop``) and answers no later question about it.
    """
    ended: dict[str, str] = {}

    def await_result() -> None:
        ended["status"] = wait_until_terminal(client)
        stop.set()

    watcher = threading.Thread(target=await_result, name="job-result", daemon=True)
    watcher.start()
    while not stop.wait(0.5):  # a timed wait, so SIGINT/SIGTERM handlers run promptly
        pass
    if "status" not in ended:
        client.cancel().result()
        watcher.join(timeout=120)
    return ended.get("status", "UNKNOWN: no result within 120 s of cancelling")


def wait_until_terminal(client: JobClient) -> str:
    """Block until the job ended; a cancelled job's result is a ``JobCancellationException``."""
    try:
        client.get_job_execution_result().result()
    except Exception as exc:
        return "CANCELED" if "JobCancellationException" in str(exc) else f"FAILED: {exc}"
    return "FINISHED"


def wait_for_rest(job_id: str, ports: str, timeout_s: float = 60.0) -> str | None:
    """The local REST API's URL once it knows ``job_id``, or ``None`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if url := runtime.rest_url(job_id, ports):
            return url
        time.sleep(0.5)
    return None


def stop_children(timeout_s: float = 15.0) -> None:
    """Stop and reap our child processes (the JVM gateway): exiting first would leave them to init as zombies."""
    children = [int(pid) for f in Path("/proc/self/task").glob("*/children") for pid in f.read_text().split()]
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for pid in children:
        with contextlib.suppress(ChildProcessError):  # already reaped
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    deadline = float("inf")
                time.sleep(0.05)
