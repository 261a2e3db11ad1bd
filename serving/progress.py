"""Progress of a replica's bootstrap replay: a rich progress bar on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("serving.replay")


class ReplayProgress:
    """Records replayed so far against the readable end seen in the latest fetch responses."""

    def __init__(
        self, description: str, start_offsets: Mapping[int, int], *, log_every_s: float = 2.0
    ) -> None:
        self._description = description
        self._start = dict(start_offsets)
        self._log_every_s = log_every_s
        self._t0 = time.monotonic()
        self._last_log = self._t0
        self._done = 0
        self._bar: Any = None
        self._task: Any = None
        if sys.stderr.isatty():
            self._open_bar()

    def _open_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task(self._description, total=None)
        self._bar.start()

    def update(self, positions: Mapping[int, int], ends: Mapping[int, int | None]) -> None:
        done = sum(max(0, pos - self._start.get(p, 0)) for p, pos in positions.items())
        known = [(p, e) for p, e in ends.items() if e is not None]
        total = sum(max(0, e - self._start.get(p, 0)) for p, e in known) if len(known) == len(ends) else None
        self._done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
            return
        now = time.monotonic()
        if now - self._last_log >= self._log_every_s:
            self._last_log = now
            rate = done / max(now - self._t0, 1e-9)
            of = f" / {total:,} ({100 * done / total:.1f}%)" if total else ""
            log.info("%s: %s records%s, %.0f records/s", self._description, f"{done:,}", of, rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elapsed = time.monotonic() - self._t0
        log.info("%s: %s records in %.2f s", self._description, f"{self._done:,}", elapsed)
