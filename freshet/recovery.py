"""``freshet replay``: recover the whole pipeline from one replica snapshot (DESIGN contract 6).

A snapshot's manifest names the newest completed Flink checkpoint its cut includes (``serving.alignment``).
Recovery is then two steps, both of which this module prepares and ``freshet replay`` runs:

1. restore the delta job from that checkpoint: ``freshet job restore --from <checkpoint dir>/<job>/chk-N``
   (it resumes the job's Kafka offsets and window state; deltas after the barrier are emitted again);
2. start a replica from the snapshot: its files are linked into a fresh snapshot directory, so the replica
   loads exactly that snapshot, replays the delta topic from its offsets, and re-applies the re-emitted
   deltas harmlessly (deltas are absolute and versioned).

Together they end where the run that never failed would have ended. Nothing here imports Flink, Kafka or an
HTTP stack: the steps run as ``freshet job`` and ``freshet serve`` processes, and whether the replica became
ready is asked with the standard library's ``urllib`` (``ready_state``), the way any HTTP probe would ask.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshet.errors import FreshetError
from freshet.layout import TensorLayout
from freshet.snapshot import (
    MANIFEST,
    PREFIX,
    SnapshotError,
    list_snapshots,
    load_snapshot,
    newest_valid_snapshot,
)


class RecoveryError(FreshetError):
    """A replay cannot start; the message says what is missing and what to do."""


@dataclass(frozen=True)
class RecoveryPlan:
    snapshot: Path
    checkpoint: Path
    replica_dir: Path
    job_command: list[str]
    replica_command: list[str]


def choose_snapshot(path: Path, layout: TensorLayout) -> Path:
    """``path`` if it is a snapshot, else the newest snapshot under it that loads (checksums included)."""
    try:
        if (path / MANIFEST).is_file():
            load_snapshot(path, layout)
            return path
        return newest_valid_snapshot(path, layout)[0]
    except SnapshotError as exc:
        raise RecoveryError(str(exc)) from exc


def named_checkpoint(snapshot: Path, layout: TensorLayout) -> Path:
    """The retained checkpoint the snapshot's manifest names, checked to exist."""
    _, manifest = load_snapshot(snapshot, layout)
    if manifest.flink_checkpoint is None:
        raise RecoveryError(
            f"{snapshot} names no Flink checkpoint: the replica that wrote it ran without --checkpoint-dir, or "
            "had read no complete checkpoint marker yet; pick an older snapshot, or restore the job by hand "
            "from a checkpoint no newer than the snapshot's offsets"
        )
    checkpoint = Path(manifest.flink_checkpoint)
    if not (checkpoint / "_metadata").is_file():
        raise RecoveryError(
            f"{snapshot} names checkpoint {checkpoint}, which is gone (Flink keeps only the newest "
            "execution.checkpointing.num-retained checkpoints); replay a newer snapshot, or retain more "
            "checkpoints (freshet job run --conf execution.checkpointing.num-retained=N)"
        )
    return checkpoint


def stage_snapshot(snapshot: Path, replica_dir: Path) -> Path:
    """Link (or copy) the snapshot's files into ``replica_dir``, which must hold no snapshot yet."""
    if list_snapshots(replica_dir):
        raise RecoveryError(f"{replica_dir} already holds snapshots: give an empty --replica-dir")
    target = replica_dir / f"{PREFIX}{1:010d}"
    target.mkdir(parents=True)
    for file in sorted(snapshot.iterdir(), key=lambda f: f.name == MANIFEST):  # the manifest last
        try:
            os.link(file, target / file.name)  # snapshot files are never written again: sharing them is safe
        except OSError:
            shutil.copy2(file, target / file.name)
    return target


def plan(
    path: Path,
    layout: TensorLayout,
    replica_dir: Path,
    *,
    job_args: list[str] | None = None,
    serve_args: list[str] | None = None,
) -> RecoveryPlan:
    """Check everything a replay needs and build its two commands (nothing is started or written)."""
    snapshot = choose_snapshot(path, layout)
    checkpoint = named_checkpoint(snapshot, layout)
    freshet = [sys.executable, "-m", "freshet.cli"]
    job = [*freshet, "job", "restore", "--from", str(checkpoint), *(job_args or [])]
    replica = [*freshet, "serve", "--snapshots", str(replica_dir), "--checkpoint-dir",
               str(checkpoint.parent.parent), *(serve_args or [])]  # fmt: skip
    return RecoveryPlan(snapshot, checkpoint, replica_dir, job, replica)


def replica_url(serve_args: list[str], environ: Mapping[str, str]) -> str:
    """Where ``freshet serve <serve_args>`` answers: its ``--host``/``--port``, else ``FRESHET_HOST``/
    ``FRESHET_PORT``, else the replica's defaults (a wildcard listen address is asked on loopback).

    >>> replica_url(["--port", "8001", "--models", "m"], {}), replica_url(["--host=0.0.0.0"], {"FRESHET_PORT": "9"})
    ('http://127.0.0.1:8001', 'http://127.0.0.1:9')
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--host")
    parser.add_argument("--port")
    known, _ = parser.parse_known_args(serve_args)
    host = known.host or environ.get("FRESHET_HOST", "127.0.0.1")
    port = known.port or environ.get("FRESHET_PORT", "8000")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def ready_state(base_url: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The replica's ``GET /v1/state`` once ``GET /readyz`` says 200 (caught up with the delta topic), else
    ``None``: not listening yet, still replaying, or an answer that is not JSON."""
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=timeout_s):
            pass  # 503 (not ready) raises HTTPError
        with urllib.request.urlopen(f"{base_url}/v1/state", timeout=timeout_s) as response:
            state: dict[str, Any] = json.loads(response.read())
            return state
    except (OSError, ValueError):  # URLError and HTTPError are OSErrors
        return None


def ready_line(base_url: str, state: Mapping[str, Any]) -> str:
    """What ``freshet replay`` prints once the replica is ready.

    >>> ready_line("http://h:1", {"digest": "ab", "started_from_snapshot": "/r/s", "flink_checkpoint": None,
    ...                           "offsets": {"0": 3}})
    'replica ready at http://h:1: digest ab, started from /r/s, aligned with checkpoint None, offsets {"0": 3}'
    """
    return (f"replica ready at {base_url}: digest {state.get('digest')}, started from "
            f"{state.get('started_from_snapshot')}, aligned with checkpoint {state.get('flink_checkpoint')}, "
            f"offsets {json.dumps(state.get('offsets'))}")  # fmt: skip
