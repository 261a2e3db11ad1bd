"""Fault injection with real processes on the embedded broker: SIGKILL the Flink job (its whole process group:
driver, JVM with the MiniCluster, Python workers) and the replica at seeded random moments, recover as an
operator would, and hold the replica's final digest to the oracle's applied state.

One run (``test_job_and_replica_killed_mid_stream_recover_to_the_oracle_state``):

(a) round one of the stream in ``FRESHET_FAULT_JOB_KILLS`` + 1 paced parts (default 1 kill: two parts); after
    each part but the last the job is killed at a random moment and restored from the latest retained
    checkpoint (``freshet job restore``); a replica runs throughout; once round one is in, its digest must
    equal the oracle's, and every checkpoint marker the restored job wrote must be no older than Flink's
    trigger of the checkpoint it names;
(c) round two, first part; the job *and* the replica are killed; ``freshet replay`` of an older snapshot
    (chosen at random among those naming a checkpoint) restores the job from the checkpoint that snapshot
    names and starts a replica from it; the rest of round two follows; the new replica must end at the
    oracle's digest. Round two's last event fires every open window, and only the restored job sees it, so
    this fails if the job's state from that checkpoint is wrong or the snapshot's cut is not aligned with it.

(b) ``test_replica_killed_during_snapshot_writes_recovers_the_same_digest``: kill -9 while a snapshot is being
    written (kill -9 mid-apply is ``tests/test_serving_process.py``).

Kill points come from ``FRESHET_FAULT_SEED`` (printed); ``FRESHET_FAULT_SEEDS=1,2,3`` runs each scenario once
per seed. ``bench/faults.py`` (the soak) runs this module over many seeds, with more job kills, and collects
what each run appends to ``FRESHET_FAULT_FIGURES`` (a JSON line per run, written before its assertions, so
failed runs are counted too).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kafka_helpers
import pytest
from faults_helpers import (
    kill_group,
    latest_checkpoint,
    make_stream,
    newest_snapshot_model,
    oracle_model,
    pace,
    reaped,
    restore_argv,
    rows_wrong,
    start_job,
)
from flink_driver import DriverProcess, stop_group
from test_job_flink import FS_DEFS, LAYOUT, Setup, _require_flink
from test_serving_process import ServeProcess

from freshet.broker import free_port
from freshet.markers import decode_marker, is_marker
from freshet.snapshot import list_snapshots, load_snapshot
from serving.testing import DeltaProducer, random_deltas, send_in_transactions, wait_until

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.http]

SEEDS = [
    int(s)
    for s in os.environ.get("FRESHET_FAULT_SEEDS", os.environ.get("FRESHET_FAULT_SEED", "6")).split(",")
]
#: job kills in scenario (a): one in the test command (each costs a job restart, ~15 s), more in the soak
JOB_KILLS = int(os.environ.get("FRESHET_FAULT_JOB_KILLS", "1"))
PACE_S = 1.5  # each paced part of the stream: a kill inside it lands between 1 s checkpoints, at random


@contextlib.contextmanager
def recorded(scenario: str, seed: int) -> Iterator[dict[str, Any]]:
    """Figures of one run, appended to ``FRESHET_FAULT_FIGURES`` (if set) whether the run passes or not."""
    start = time.monotonic()
    figures: dict[str, Any] = {"scenario": scenario, "seed": seed, "passed": False, "phases_s": {},
                               "_start": start}  # fmt: skip
    try:
        yield figures
        figures["passed"] = True
    finally:
        figures["duration_s"] = round(time.monotonic() - figures.pop("_start"), 1)
        print("faults:", json.dumps(figures))
        if out := os.environ.get("FRESHET_FAULT_FIGURES"):
            with open(out, "a") as f:
                f.write(json.dumps(figures) + "\n")


def replica_args(setup: Setup, snapshots: Path, checkpoints: Path) -> list[str]:
    return ["--bootstrap-servers", setup.servers, "--delta-topic", setup.deltas, "--feature-defs", str(FS_DEFS),
            "--model-dir", str(setup.models), "--snapshot-dir", str(snapshots), "--checkpoint-dir", str(checkpoints),
            "--snapshot-every-s", "1", "--snapshot-every-deltas", "0", "--snapshot-retention", "500",
            "--poll-batch-size", "200"]  # fmt: skip


def wait_for_digest(get_state: Any, want: str, timeout_s: float, what: str) -> dict[str, Any] | None:
    """The replica's state once its digest is ``want``; ``None`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = get_state()
        if state is not None and state["digest"] == want:
            return dict(state)
        time.sleep(0.5)
    print(f"{what}: digest not reached within {timeout_s} s")
    return None


def phase(figures: dict[str, Any], name: str) -> None:
    """When ``name`` was reached, in seconds since the run began (where the soak's time goes)."""
    figures["phases_s"][name] = round(time.monotonic() - figures["_start"], 1)


def http_state(serve: ServeProcess) -> Any:
    response = serve.get("/v1/state")
    return response.json() if response is not None and response.status_code == 200 else None


def run_killed_and_replayed(setup: Setup, tmp_path: Path, seed: int, figures: dict[str, Any]) -> None:
    """The whole scenario of the module docstring; fills in ``figures`` (kills, rows wrong) as it goes."""
    rng = random.Random(seed)
    stream = make_stream(seed)
    want1 = oracle_model(stream.round1, stream.attributes)
    want2 = oracle_model(stream.round1 + stream.round2, stream.attributes)
    checkpoints = tmp_path / "checkpoints"
    cuts = [len(stream.round1) * i // (JOB_KILLS + 1) for i in range(JOB_KILLS + 2)]
    parts = [stream.round1[a:b] for a, b in itertools.pairwise(cuts)]
    figures.update(kill_after_s=[], job_kills=0, replica_kills=0)
    kafka_attrs = stream.attributes
    setup.produce([], (), kafka_attrs)
    replica = ServeProcess(replica_args(setup, tmp_path / "r1", checkpoints), tmp_path / "r1.log")
    procs: list[subprocess.Popen[Any]] = [replica.proc]
    with reaped(procs):
        job = start_job(setup.run_argv(tmp_path), tmp_path / "job0")
        procs.append(job.proc)
        phase(figures, "job_running")
        for i, part in enumerate(parts):
            sending = pace(setup, part, seconds=PACE_S)
            if i == len(parts) - 1:
                sending.join()
                break
            job = kill_and_restore(job, rng, figures, checkpoints, tmp_path / f"job{i + 1}", procs)
            phase(figures, f"job_restored_{i + 1}")
            sending.join()
        state = wait_for_digest(lambda: http_state(replica), want1.digest(), 180, "round one")
        phase(figures, "round_one_at_oracle")
        figures["markers_checked"] = check_markers_follow_their_trigger(setup, job)
        figures["rows_wrong_a"] = 0 if state else rows_wrong(newest_snapshot_model(tmp_path / "r1"), want1)
        assert state is not None, f"after round one the replica differs from the oracle: {figures}"

        sending = pace(setup, stream.round2[:100], seconds=PACE_S)
        delay = round(rng.uniform(0.3, 2.5), 2)
        time.sleep(delay)
        kill_group(job.proc)
        figures["kill_after_s"].append(delay)
        replica.stop(signal.SIGKILL)
        figures["job_kills"] += 1
        figures["replica_kills"] += 1
        sending.join()
        older = pick_older_snapshot(rng, tmp_path / "r1")
        figures["replayed_snapshot"] = older["flink_checkpoint"]
        replayed, port = start_replay(setup, Path(older["path"]), tmp_path, procs)
        phase(figures, "replay_job_running")
        setup.produce(stream.round2[100:])
        serve_state = lambda: _state_on(port)  # noqa: E731
        state = wait_for_digest(serve_state, want2.digest(), 180, "after the replay")
        phase(figures, "replay_at_oracle")
        figures["rows_wrong_c"] = 0 if state else rows_wrong(newest_snapshot_model(tmp_path / "r2"), want2)
        assert state is not None, f"the replayed pipeline differs from the oracle: {figures}"
        restored = replayed.rest("/checkpoints")["latest"]["restored"]["external_path"]
        assert Path(restored.removeprefix("file:")) == Path(older["flink_checkpoint"]).resolve()
        assert state["started_from_snapshot"].startswith(str(tmp_path / "r2"))
        ready = f"freshet replay: replica ready at http://127.0.0.1:{port}: digest "
        wait_until(lambda: ready in (tmp_path / "replay" / "driver.err").read_text(), timeout_s=15,
                   what="freshet replay reporting the replica ready")  # fmt: skip
        os.killpg(replayed.proc.pid, signal.SIGTERM)
        replayed.proc.wait(timeout=120)
        assert not stop_group(replayed.proc.pid, timeout_s=30), "replay left processes behind"


def check_markers_follow_their_trigger(setup: Setup, job: Any) -> int:
    """Every checkpoint marker the running job wrote is no older than Flink's trigger of the checkpoint it
    names (its record time against the REST history); returns how many were checked.

    A marker of checkpoint N written before N was triggered (N+1's marker at barrier N, say) is the one way
    the operator can make a replica name a checkpoint its cut does not include; end-state comparisons cannot
    see it (the delta topic keeps every delta, and a restored job re-emits what follows its checkpoint).
    Uncommitted records count too: the rule holds for every record the operator writes.
    """
    triggered = {c["id"]: c["trigger_timestamp"] for c in job.rest("/checkpoints")["history"]}
    records = kafka_helpers.read_topic(setup.servers, setup.deltas, isolation_level="read_uncommitted")
    marked = [(decode_marker(r.value), r.timestamp) for r in records if is_marker(r.value)]
    mine = [
        (m.checkpoint_id, ts)
        for m, ts in marked
        if m and m.job_id == job.job_id and m.checkpoint_id in triggered
    ]
    early = [(n, ts, triggered[n]) for n, ts in mine if ts < triggered[n]]
    assert mine, f"no marker of the checkpoints in the job's REST history {sorted(triggered)}"
    assert not early, (
        f"markers written before their checkpoint was triggered (id, written, triggered): {early[:5]}"
    )
    return len(mine)


def kill_and_restore(job: Any, rng: random.Random, figures: dict[str, Any], checkpoints: Path, work_dir: Path,
                     procs: list[Any]) -> Any:  # fmt: skip
    """SIGKILL the job's process group at a random moment once it has a checkpoint; restore the latest one."""
    wait_until(lambda: latest_checkpoint(checkpoints, job.job_id) is not None, timeout_s=60,
               what="a first checkpoint of the job")  # fmt: skip
    delay = round(rng.uniform(0.2, 2.0), 2)
    time.sleep(delay)
    kill_group(job.proc)
    figures["kill_after_s"].append(delay)
    figures["job_kills"] += 1
    checkpoint = latest_checkpoint(checkpoints)
    assert checkpoint is not None
    restored = start_job(restore_argv(checkpoint), work_dir)
    procs.append(restored.proc)
    return restored


def pick_older_snapshot(rng: random.Random, root: Path) -> dict[str, Any]:
    """A random snapshot, not the newest, that names a checkpoint still retained."""
    named = []
    for path in list_snapshots(root)[1:]:
        _, manifest = load_snapshot(path, LAYOUT)
        if manifest.flink_checkpoint and (Path(manifest.flink_checkpoint) / "_metadata").is_file():
            named.append({"path": str(path), "flink_checkpoint": manifest.flink_checkpoint})
    assert len(named) >= 2, f"too few snapshots naming a checkpoint under {root}: {named}"
    return rng.choice(named[: max(2, len(named) // 2)])  # from the older half


def start_replay(setup: Setup, snapshot: Path, tmp_path: Path, procs: list[Any]) -> tuple[DriverProcess, int]:
    """``freshet replay`` in its own process group; its stdout carries the restored job's messages."""
    port = free_port()
    serve = ["--port", str(port), "--bootstrap", setup.servers, "--delta-topic", setup.deltas, "--models",
             str(setup.models), "--snapshot-every-s", "1", "--snapshot-every-deltas", "0"]  # fmt: skip
    argv = [sys.executable, "-m", "freshet.cli", "replay", str(snapshot), "--replica-dir", str(tmp_path / "r2"),
            "--defs", str(FS_DEFS), "--serve-args", shlex.join(serve)]  # fmt: skip
    work = tmp_path / "replay"
    work.mkdir()
    with (work / "driver.err").open("w") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)  # fmt: skip
    procs.append(proc)
    return DriverProcess(proc, work), port


def _state_on(port: int) -> Any:
    import httpx

    try:
        response = httpx.get(f"http://127.0.0.1:{port}/v1/state", timeout=5)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


@pytest.mark.parametrize("seed", SEEDS)
def test_job_and_replica_killed_mid_stream_recover_to_the_oracle_state(
    broker, make_topic, tmp_path, seed
) -> None:
    _require_flink()
    setup = Setup.make(broker, make_topic, tmp_path)
    print(f"fault seed {seed} (FRESHET_FAULT_SEED), {JOB_KILLS} job kill(s) in round one")
    with recorded("job_killed_and_replayed", seed) as figures:
        run_killed_and_replayed(setup, tmp_path, seed, figures)
        assert (
            figures["job_kills"] == JOB_KILLS + 1 and figures["rows_wrong_a"] == figures["rows_wrong_c"] == 0
        )


def _kill_during_a_snapshot_write(serve: ServeProcess, snapshots: Path, rng: random.Random) -> float:
    """SIGKILL the replica while a ``.tmp-snapshot-*`` write is in progress, once it has published a snapshot
    of its own (so a complete one is there to recover from); returns the delay used."""
    newest = lambda: list_snapshots(snapshots)[0].name if list_snapshots(snapshots) else ""  # noqa: E731
    before = newest()
    wait_until(lambda: newest() > before, timeout_s=60, interval_s=0.01, what="a new published snapshot")
    wait_until(lambda: list(snapshots.glob(".tmp-snapshot-*")), timeout_s=60, interval_s=0.002,
               what="a snapshot write in progress")  # fmt: skip
    delay = round(rng.uniform(0.0, 0.02), 4)
    time.sleep(delay)
    assert serve.stop(signal.SIGKILL) == -signal.SIGKILL
    assert list(snapshots.glob(".tmp-snapshot-*")), "the kill did not land inside a write; widen the window"
    return delay


@pytest.mark.parametrize("seed", SEEDS)
def test_replica_killed_during_snapshot_writes_recovers_the_same_digest(
    broker, make_topic, tmp_path, seed
) -> None:
    """Two kill -9s inside snapshot writes (seeded delays), each followed by a restart on the same directory:
    the partial writes are discarded, the newest complete snapshot loads, and the replica ends at the digest
    of a replica that read the topic once."""
    with recorded("replica_killed_in_snapshot_writes", seed) as figures:
        _killed_during_snapshot_writes(broker, make_topic, tmp_path, seed, figures)
        assert figures["digest_equal"], "the restarted replica's digest differs from the uninterrupted one's"


def _killed_during_snapshot_writes(broker: Any, make_topic: Any, tmp_path: Path, seed: int,
                                   figures: dict[str, Any]) -> None:  # fmt: skip
    rng = random.Random(seed)
    topic = make_topic(partitions=3)
    snapshots = tmp_path / "snapshots"
    args = ["--bootstrap-servers", broker.bootstrap_servers, "--delta-topic", topic, "--feature-defs", str(FS_DEFS),
            "--snapshot-dir", str(snapshots), "--snapshot-every-deltas", "1500", "--snapshot-every-s", "0",
            "--poll-batch-size", "500", "--snapshot-retention", "2"]  # fmt: skip
    deltas = random_deltas(LAYOUT, rng, 30_000, items=20_000)
    producer = DeltaProducer(broker.bootstrap_servers, topic, LAYOUT)
    sending = threading.Thread(target=send_in_transactions, args=(producer, deltas, rng))
    delays, serves = [], []
    try:
        for i in range(2):
            serves.append(ServeProcess(args, tmp_path / f"serve-{i}.log"))
            if i == 0:
                sending.start()
            delays.append(_kill_during_a_snapshot_write(serves[-1], snapshots, rng))
        assert sending.is_alive(), "the stream ended before the last kill; send more deltas"
        sending.join()
        last = ServeProcess(args, tmp_path / "serve-last.log")
        serves.append(last)
        state = last.state_when(producer.next_offsets, timeout_s=120)
        assert state["started_from_snapshot"] is not None
        assert not list(snapshots.glob(".tmp-snapshot-*")) or "deleted a partial snapshot write" in (
            last.log_path.read_text()
        )
    finally:
        sending.join() if sending.is_alive() else None
        producer.close()
        for serve in serves:
            with contextlib.suppress(Exception):
                serve.stop(signal.SIGKILL)
    figures.update(replica_kills=len(delays), kill_after_s=delays)
    figures["digest_equal"] = state["digest"] == _reference_digest(
        broker.bootstrap_servers, topic, producer.next_offsets, tmp_path
    )


def _reference_digest(servers: str, topic: str, offsets: dict[str, int], tmp_path: Path) -> str:
    """The digest of an in-process replica that read the whole topic once, never interrupted."""
    from serving.replica import Replica
    from serving.settings import Settings

    settings = Settings.load({"bootstrap_servers": servers, "delta_topic": topic, "snapshot_dir": tmp_path / "ref",
                              "snapshot_every_deltas": 0, "snapshot_every_s": 0}, environ={})  # fmt: skip
    reference = Replica(LAYOUT, settings, name="reference")
    wanted = {int(p): o for p, o in offsets.items()}
    reference.start()
    try:
        wait_until(lambda: reference.ready and all(reference.offsets().get(p, 0) >= o for p, o in wanted.items()),
                   timeout_s=120, what="the reference replica caught up")  # fmt: skip
        return reference.state().digest
    finally:
        reference.stop()
