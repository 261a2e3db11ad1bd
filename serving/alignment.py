"""Which completed Flink checkpoint this replica's state is aligned with (DESIGN contract 6).

The delta job writes checkpoint markers into the delta topic (``freshet.markers``); the replica observes
them where it decodes records, and a snapshot (and ``GET /v1/state``) names the newest checkpoint whose
markers it has read on every partition from every subtask *and* whose retained directory
``<checkpoint dir>/<job id>/chk-N/_metadata`` exists. The second condition is what makes the name safe on a
broker that shows records of aborted transactions, and what a replay needs anyway (it restores from that
directory). Without ``checkpoint_dir`` the replica names no checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from freshet.deltas import DecodedBatch
from freshet.markers import AlignedCheckpoint, CheckpointAlignment, decode_marker

log = logging.getLogger(__name__)


def checkpoint_of(path: str | None) -> AlignedCheckpoint | None:
    """The checkpoint a manifest names (``.../<job id>/chk-<n>``), or ``None``.

    >>> checkpoint_of("/c/" + "ab" * 16 + "/chk-12")
    AlignedCheckpoint(job_id='abababababababababababababababab', checkpoint_id=12)
    """
    if not path:
        return None
    p = Path(path)
    if not p.name.startswith("chk-") or not p.name[4:].isdigit():
        return None
    return AlignedCheckpoint(p.parent.name, int(p.name[4:]))


class ReplicaAlignment:
    """Markers seen by the apply loop, and the checkpoint directory that confirms them."""

    def __init__(self, checkpoint_dir: Path | None) -> None:
        self.checkpoint_dir = Path(checkpoint_dir).resolve() if checkpoint_dir else None
        self._markers = CheckpointAlignment()
        self.malformed = 0

    def reset(self, named: str | None) -> None:
        """Start over from a snapshot, which stays aligned with the checkpoint its manifest named."""
        self._markers = CheckpointAlignment(initial=checkpoint_of(named))

    def observe(
        self, batch: DecodedBatch | None, values: Sequence[bytes], partition_of: Callable[[int], int]
    ) -> int:
        """Observe the markers of a decoded batch (``partition_of(i)``: where ``values[i]`` was read; asked
        only for the markers, so a batch need not carry each record's partition)."""
        if batch is None:
            return 0
        for i in batch.marker_index.tolist():
            marker = decode_marker(values[i])
            if marker is None:
                self.malformed += 1
            else:
                self._markers.observe(partition_of(i), marker)
        return int(batch.marker_index.size)

    def candidates(self) -> list[AlignedCheckpoint]:
        """Marker-complete checkpoints so far, oldest first (read under the cut lock, checked outside)."""
        return self._markers.completed()

    def name(self, candidates: Sequence[AlignedCheckpoint]) -> str | None:
        """The path of the newest candidate whose retained directory exists, or ``None``."""
        if self.checkpoint_dir is None:
            return None
        for checkpoint in reversed(candidates):
            path = self.checkpoint_dir / checkpoint.relative_path
            if (path / "_metadata").is_file():
                return str(path)
        return None
