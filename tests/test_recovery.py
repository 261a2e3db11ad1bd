"""``freshet replay``: which snapshot, which checkpoint, refusals that say what to do, and its readiness probe
(plain ``urllib`` against a replica's ``/readyz`` and ``/v1/state``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from freshet.broker import free_port
from freshet.model import IndexModel
from freshet.recovery import (
    RecoveryError,
    choose_snapshot,
    named_checkpoint,
    plan,
    ready_state,
    replica_url,
    stage_snapshot,
)
from freshet.snapshot import list_snapshots, load_snapshot, write_snapshot
from freshet.spec import load_feature_set

DEFS = Path(__file__).resolve().parent.parent / "feature_defs"
LAYOUT = load_feature_set(DEFS).layout()
JOB_ID = "ab" * 16


def _checkpoint(root: Path, n: int, *, complete: bool = True) -> Path:
    chk = root / JOB_ID / f"chk-{n}"
    chk.mkdir(parents=True)
    if complete:
        (chk / "_metadata").write_bytes(b"flink")
    return chk


def _snapshot(root: Path, checkpoint: Path | None, offsets: dict[int, int] | None = None) -> Path:
    model = IndexModel(LAYOUT, capacity=8)
    named = str(checkpoint) if checkpoint else None
    return write_snapshot(model, root, offsets or {0: 3}, topic="freshet.deltas", flink_checkpoint=named)


def test_the_newest_valid_snapshot_of_a_directory_and_the_checkpoint_it_names(tmp_path: Path) -> None:
    old = _snapshot(tmp_path / "snaps", _checkpoint(tmp_path / "chk", 3))
    newest = _snapshot(tmp_path / "snaps", _checkpoint(tmp_path / "chk", 5), {0: 9})
    assert choose_snapshot(tmp_path / "snaps", LAYOUT) == newest
    (newest / "item_embedding.arrow").write_bytes(b"torn")  # a corrupt newest one is passed over
    assert choose_snapshot(tmp_path / "snaps", LAYOUT) == old
    assert named_checkpoint(old, LAYOUT) == tmp_path / "chk" / JOB_ID / "chk-3"


def test_a_plan_restores_the_job_from_the_named_checkpoint_and_serves_the_snapshot(tmp_path: Path) -> None:
    chk = _checkpoint(tmp_path / "chk", 7)
    snapshot = _snapshot(tmp_path / "snaps", chk)
    steps = plan(
        snapshot, LAYOUT, tmp_path / "r2", job_args=["--bootstrap", "h:1"], serve_args=["--port", "1"]
    )
    assert steps.checkpoint == chk
    assert steps.job_command[-5:] == ["restore", "--from", str(chk), "--bootstrap", "h:1"]
    assert ["--snapshots", str(tmp_path / "r2"), "--checkpoint-dir", str(tmp_path / "chk")] == (
        steps.replica_command[4:8]
    )
    staged = stage_snapshot(steps.snapshot, steps.replica_dir)
    assert list_snapshots(tmp_path / "r2") == [staged]
    assert load_snapshot(staged, LAYOUT)[1].offsets == load_snapshot(snapshot, LAYOUT)[1].offsets


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no checkpoint named", "names no Flink checkpoint"),
        ("checkpoint gone", "which is gone"),
        ("checkpoint incomplete", "which is gone"),
        ("no snapshot", "no valid snapshot"),
    ],
)
def test_refusals_say_what_to_do(tmp_path: Path, case: str, message: str) -> None:
    snaps = tmp_path / "snaps"
    if case == "no checkpoint named":
        _snapshot(snaps, None)
    elif case == "checkpoint gone":
        _snapshot(snaps, tmp_path / "chk" / JOB_ID / "chk-4")
    elif case == "checkpoint incomplete":
        _snapshot(snaps, _checkpoint(tmp_path / "chk", 4, complete=False))
    else:
        snaps.mkdir()
    with pytest.raises(RecoveryError, match=message):
        plan(snaps, LAYOUT, tmp_path / "r2")


def test_staging_refuses_a_replica_directory_that_holds_snapshots(tmp_path: Path) -> None:
    snapshot = _snapshot(tmp_path / "snaps", _checkpoint(tmp_path / "chk", 2))
    _snapshot(tmp_path / "r2", None)
    with pytest.raises(RecoveryError, match="give an empty --replica-dir"):
        stage_snapshot(snapshot, tmp_path / "r2")


def test_the_command_checks_and_prints_both_steps_or_exits_2(tmp_path: Path) -> None:
    chk = _checkpoint(tmp_path / "chk", 9)
    _snapshot(tmp_path / "snaps", chk)
    argv = [sys.executable, "-m", "freshet.cli", "replay", str(tmp_path / "snaps"),
            "--replica-dir", str(tmp_path / "r2"), "--defs", str(DEFS)]  # fmt: skip
    done = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"checkpoint {chk}" in done.stderr and "job restore --from" in done.stderr
    assert not (tmp_path / "r2").exists()  # a dry run writes nothing
    (chk / "_metadata").unlink()
    done = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "which is gone" in done.stderr


# ------------------------------------------------------------------ readiness probe

STATE = {"digest": "d1", "started_from_snapshot": "/r/snapshot-0000000001", "offsets": {"0": 4}}


@pytest.fixture
def replica() -> Iterator[tuple[str, list[int]]]:
    """A stand-in replica whose ``/readyz`` answers the status codes in ``codes``, one per request."""
    codes = [503, 200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = (codes.pop(0) if len(codes) > 1 else codes[0]) if self.path == "/readyz" else 200
            body = json.dumps(STATE if self.path == "/v1/state" else {"ready": code == 200}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", codes
    finally:
        server.shutdown()


def test_not_ready_until_readyz_says_200_then_the_state(replica) -> None:
    url, _ = replica
    assert ready_state(url) is None, "503 from /readyz: still replaying"
    assert ready_state(url) == STATE


def test_nothing_listening_is_not_ready() -> None:
    assert ready_state(f"http://127.0.0.1:{free_port()}", timeout_s=0.5) is None


@pytest.mark.parametrize(
    ("serve_args", "environ", "url"),
    [
        (["--port=8123"], {}, "http://127.0.0.1:8123"),
        (
            ["--models", "m", "--host", "10.0.0.2", "--port", "81"],
            {"FRESHET_PORT": "9"},
            "http://10.0.0.2:81",
        ),
        ([], {"FRESHET_HOST": "::", "FRESHET_PORT": "9"}, "http://127.0.0.1:9"),
        (["--portal", "1"], {}, "http://127.0.0.1:8000"),
    ],
)
def test_the_replicas_address_comes_from_its_serve_arguments(serve_args, environ, url) -> None:
    assert replica_url(serve_args, environ) == url
