"""The replica as an operator runs it: ``python -m serving`` (uvicorn) with the repository's feature_defs.

``kill -9`` in the middle of applying a delta stream, then a restart on the same snapshot directory, ends at
the same ``/v1/state`` digest as a replica that read the whole topic once.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from freshet.broker import free_port
from freshet.spec import load_feature_set
from serving.replica import Replica
from serving.settings import Settings
from serving.testing import DeltaProducer, random_deltas, send_in_transactions, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.http]

ROOT = Path(__file__).resolve().parent.parent
FEATURE_DEFS = ROOT / "feature_defs"


class ServeProcess:
    """``python -m serving`` on a free port; output goes to ``log_path``."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(self.port), "--log-level", "info", *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def get(self, path: str) -> httpx.Response | None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"the replica exited with {self.proc.returncode}:\n{self.log_path.read_text()}"
            )
        try:
            return self.http.get(path)
        except httpx.TransportError:
            return None

    def state_when(self, offsets: dict[str, int], timeout_s: float = 60) -> Any:
        def done() -> Any:
            response = self.get("/v1/state")
            if response is None or self.get("/readyz").status_code != 200:  # type: ignore[union-attr]
                return None
            state = response.json()
            return state if all(state["offsets"].get(p, 0) >= o for p, o in offsets.items()) else None

        return wait_until(
            done, timeout_s=timeout_s, interval_s=0.2, what=f"replica on port {self.port} caught up"
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        finally:
            self._log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[ServeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServeProcess:
        process = ServeProcess(list(args), tmp_path / f"serve-{len(started)}.log", env)
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(Exception):
            process.stop(signal.SIGKILL)


def test_kill_9_mid_apply_then_restart_recovers_the_same_digest(broker, make_topic, serve, tmp_path) -> None:
    layout = load_feature_set(FEATURE_DEFS).layout()
    topic = make_topic(partitions=3)
    snapshots = tmp_path / "snapshots"
    args = ["--bootstrap-servers", broker.bootstrap_servers, "--delta-topic", topic, "--feature-defs",
            str(FEATURE_DEFS), "--snapshot-dir", str(snapshots), "--snapshot-every-deltas", "400",
            "--snapshot-every-s", "0", "--poll-batch-size", "50"]  # fmt: skip
    first = serve(*args)
    wait_until(lambda: (r := first.get("/readyz")) is not None and r.status_code == 200, timeout_s=60,
               what="the first process ready")  # fmt: skip

    rng = random.Random(21)
    deltas = random_deltas(layout, rng, 6000, items=300)
    producer = DeltaProducer(broker.bootstrap_servers, topic, layout)
    sending = threading.Thread(target=send_in_transactions, args=(producer, deltas, rng))
    sending.start()
    try:
        # kill it while it applies: a snapshot exists and the stream is still arriving
        wait_until(lambda: len(list(snapshots.glob("snapshot-*"))) >= 2, timeout_s=60, what="two snapshots")
        assert sending.is_alive(), "the stream ended before the kill; send more deltas"
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        sending.join()
        producer.close()

    second = serve(*args)
    state = second.state_when(producer.next_offsets)
    assert state["started_from_snapshot"] is not None

    reference_settings = Settings.load({"bootstrap_servers": broker.bootstrap_servers, "delta_topic": topic,
                                        "snapshot_dir": tmp_path / "reference"}, environ={})  # fmt: skip
    reference = Replica(layout, reference_settings, name="reference")
    wanted = {int(p): o for p, o in producer.next_offsets.items()}
    reference.start()
    try:
        wait_until(lambda: reference.ready and all(reference.offsets().get(p, 0) >= o for p, o in wanted.items()),
                   timeout_s=60, what="the reference replica caught up")  # fmt: skip
        expected = reference.state()
    finally:
        reference.stop()
    final = second.state_when(producer.next_offsets)
    assert final["digest"] == expected.digest
    assert final["items"] == expected.items > 0
    assert second.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "Application shutdown complete" in second.log_path.read_text()


def test_print_openapi_starts_nothing(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "serving", "--print-openapi", "--bootstrap-servers", "127.0.0.1:9",
         "--feature-defs", str(tmp_path / "missing")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {"/v1/retrieve", "/v1/items/{item_id}", "/v1/state", "/healthz", "/readyz", "/metrics",
            "/admin/snapshot"} <= set(doc["paths"])  # fmt: skip
    assert doc["components"]["schemas"]["RetrieveRequest"]["properties"]["k"]["maximum"] == 1000


def test_bad_settings_exit_2_with_the_flag_named() -> None:
    out = subprocess.run([sys.executable, "-m", "serving"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "FRESHET_SNAPSHOT_RETENTION": "0"})  # fmt: skip
    assert out.returncode == 2
    assert "--snapshot-retention" in out.stderr
