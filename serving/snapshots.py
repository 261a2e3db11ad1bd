"""This replica's snapshot directory: write with retention, load the newest valid one, write periodically.

The snapshot *format* (files, checksums, atomic publish, manifest last) is the core's ``freshet.snapshot``;
this module only decides when to write, what to keep, and which one to start from.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from freshet.layout import TensorLayout
from freshet.model import IndexModel
from freshet.model_state import ModelState
from freshet.snapshot import Manifest, SnapshotError, list_snapshots, load_snapshot, write_snapshot
from serving.metrics import ReplicaMetrics

log = logging.getLogger(__name__)


def refusal_reason(error: Exception) -> str:
    """A short label for the metric ``freshet_snapshots_refused{reason}``.

    >>> refusal_reason(ValueError("x: checksum of item_embedding does not match"))
    'checksum'
    >>> refusal_reason(ValueError("something else"))
    'invalid'
    """
    message = str(error).lower()
    for key, reason in (("checksum", "checksum"), ("sha256", "checksum"), ("layout", "layout"),
                        ("truncat", "truncated"), ("manifest", "manifest"), ("missing", "missing")):  # fmt: skip
        if key in message:
            return reason
    return "invalid"


class SnapshotStore:
    """Snapshots of one replica under ``root``; keeps the newest ``retention`` of them."""

    def __init__(
        self, root: Path, layout: TensorLayout, *, topic: str, retention: int, metrics: ReplicaMetrics
    ) -> None:
        self.root = Path(root)
        self.layout = layout
        self.topic = topic
        self.retention = retention
        self.metrics = metrics

    def paths(self) -> list[Path]:
        """Published snapshot paths, newest first."""
        return list_snapshots(self.root)

    def load_newest_valid(self) -> tuple[IndexModel, Manifest, Path] | None:
        """The newest snapshot that loads; each refused one is logged with its reason and counted."""
        for path in self.paths():
            try:
                model, manifest = load_snapshot(path, self.layout)
            except (SnapshotError, OSError, ValueError) as exc:
                log.warning("skipping snapshot %s: %s", path, exc)
                self.metrics.snapshots_refused.labels(reason=refusal_reason(exc)).inc()
                continue
            log.info(
                "loaded snapshot %s (%d items, model version %d, offsets %s)",
                path, len(model), manifest.model_version, dict(manifest.offsets),
            )  # fmt: skip
            return model, manifest, path
        return None

    def write(
        self, state: ModelState, offsets: Mapping[int, int], flink_checkpoint: str | None = None
    ) -> Path:
        """Write ``state`` (a copy taken at the cut) with the ``offsets`` and the Flink checkpoint it includes;
        prune old snapshots."""
        started = time.perf_counter()
        path = write_snapshot(
            state, self.root, dict(offsets), topic=self.topic, flink_checkpoint=flink_checkpoint
        )
        self.metrics.snapshot_seconds.observe(time.perf_counter() - started)
        self.metrics.snapshots_written.inc()
        self.prune()
        return path

    def remove_partial_writes(self) -> list[Path]:
        """Delete what a crash mid-write left (``write_snapshot`` writes into ``.tmp-snapshot-*`` and renames).

        Only this replica writes under its root, so at start every such directory is a dead write.
        """
        doomed = sorted(self.root.glob(".tmp-snapshot-*")) if self.root.is_dir() else []
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
            log.info("deleted a partial snapshot write %s", path)
        return doomed

    def prune(self) -> list[Path]:
        """Delete all but the newest ``retention`` snapshots; returns what was deleted."""
        doomed = self.paths()[self.retention :]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
            log.info("deleted old snapshot %s (retention %d)", path, self.retention)
        return doomed


class PeriodicSnapshots:
    """A thread that calls ``take()`` whenever ``due()`` says so; failures are logged and counted."""

    def __init__(
        self,
        due: Callable[[], bool],
        take: Callable[[], Any],
        metrics: ReplicaMetrics,
        *,
        check_every_s: float = 0.5,
        name: str = "replica",
    ) -> None:
        self._due, self._take, self._metrics = due, take, metrics
        self._check_every_s = check_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"freshet-snapshots-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self._check_every_s):
            try:
                if self._due():
                    self._take()
            except Exception:
                log.exception("periodic snapshot failed; the replica keeps serving and retries later")
                self._metrics.snapshot_errors.inc()
