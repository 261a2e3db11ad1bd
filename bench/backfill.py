"""Benchmark of ``freshet backfill``: events per second from a logged synthetic feed to a written snapshot.

    .venv/bin/python -m bench.backfill                      # 10M raw records of the synthetic social feed
    .venv/bin/python -m bench.backfill --events 1000000     # a shorter run

The feed (``freshet.feedgen``, default rates: 400 engagements, 20 posts and 2 attribute changes per second of
event time, with its malformed and late shares) is written once as an event log (JSON Lines by default) under
``.freshet/bench/`` and reused by later runs of the same size and format. ``--until`` is ten minutes before the
feed's end (a twentieth of a shorter feed), so the newest windows hold events (not only the empty-window defaults that the end of
the stream fires). Throughput counts every raw record read, malformed ones included, over the whole run:
reading and parsing, windows, embedding with the item tower, apply, and writing the snapshot.

Writes ``bench/results/backfill.json``: flat keys, every name carrying its unit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshet.feedgen import FeedConfig, FeedGenerator
from freshet.offline.backfill import backfill
from freshet.offline.eventlog import Format, log_bytes, topic_files, write_event_log
from freshet.publish import publish_model
from freshet.snapshot import write_snapshot
from freshet.spec import FeatureSet, load_feature_set
from freshet.training import build_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
CACHE = ROOT / ".freshet" / "bench"
START_MS = 1_699_920_000_000  # 2023-11-14T00:00:00Z: windows of every size align on it


class StageClock:
    """``freshet.offline.backfill.Progress`` that times each stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._started = time.perf_counter()

    def stage(self, description: str, total: int | None = None) -> None:
        self.stop()
        self._name, self._started = description, time.perf_counter()

    def advance(self, amount: int) -> None:
        pass

    def stop(self) -> None:
        if self._name is not None:
            key = self._name.split(" with ")[0].split(" of ")[0].replace(" ", "_").replace(".", "_")
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - self._started
        self._name = None


def feed_log(events: int, fmt: Format) -> tuple[Path, int, float]:
    """The event log of the first ``events`` feed records (written unless cached); its end time and write time."""
    directory = CACHE / f"backfill-feed-{events}-{fmt}"
    marker = directory / "feed.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        return directory, int(meta["end_ms"]), float(meta["write_s"])
    shutil.rmtree(directory, ignore_errors=True)
    generator = FeedGenerator(FeedConfig(), start_ms=START_MS)
    started = time.perf_counter()
    last = [START_MS]

    def tracked() -> Any:
        for record in itertools.islice(generator.records(10**9), events):
            last[0] = max(last[0], record.ts_ms)
            yield record

    counts = write_event_log(tracked(), directory, fmt)
    write_s = time.perf_counter() - started
    marker.write_text(json.dumps({"end_ms": last[0], "write_s": write_s, "records": counts}))
    return directory, last[0], write_s


def published_models(feature_set: FeatureSet, root: Path) -> Path:
    """A published two-tower model shaped like the demo's (untrained: throughput does not care)."""
    publish_model(root, feature_set.embedding.model, build_model(feature_set),
                  layout_hash=feature_set.layout().layout_hash)  # fmt: skip
    return root


def run(events: int, fmt: Format, until_before_end_s: int | None) -> dict[str, Any]:
    feature_set = load_feature_set(ROOT / "feature_defs")
    log, end_ms, write_s = feed_log(events, fmt)
    load_before = os.getloadavg()[0]
    if until_before_end_s is None:  # ten minutes, or a twentieth of a shorter feed
        until_before_end_s = min(600, (end_ms - START_MS) // 20_000)
    until_ms = end_ms - 1000 * until_before_end_s
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        models = published_models(feature_set, Path(tmp) / "models")
        clock = StageClock()
        started = time.perf_counter()
        result = backfill(feature_set, log, until_ms, models, progress=clock)
        clock.stage("writing snapshot")
        write_snapshot(result.model, Path(tmp) / "snapshots", offsets={})
        clock.stop()
        total_s = time.perf_counter() - started
    summary = result.summary()
    records = sum(s["records"] for s in summary["sources"].values())
    read_s = sum(v for k, v in clock.seconds.items() if k.startswith("reading"))
    out: dict[str, Any] = {
        "input_records": events,
        "input_format": fmt,
        "input_bytes": sum(log_bytes(topic_files(log, s.topic)) for s in feature_set.sources),
        "feed_seconds_of_event_time": (end_ms - START_MS) // 1000,
        "until_before_end_s": until_before_end_s,
        "records_read": records,
        "events_parsed": sum(s["events"] for s in summary["sources"].values()),
        "records_rejected": sum(sum(s["rejected"].values()) for s in summary["sources"].values()),
        "events_too_late": sum(summary["too_late"].values()),
        "items": summary["items"],
        "cells_feature": summary["cells"].get("feature", 0),
        "cells_eligibility": summary["cells"].get("eligibility", 0),
        "cells_embedding": summary["cells"].get("embedding", 0),
        "total_s": round(total_s, 2),
        "events_per_s": round(records / total_s),
        "read_and_parse_s": round(read_s, 2),
        "read_and_parse_events_per_s": round(records / read_s) if read_s else None,
        **{f"stage_{k}_s": round(v, 2) for k, v in clock.seconds.items()},
        "feed_generate_and_write_s": round(write_s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpus": os.cpu_count(),
        "load_average_1m_before": round(load_before, 2),  # the machine is shared: timings move with it
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "digest": summary["digest"],
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000_000, help="raw records in the generated feed")
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    parser.add_argument("--until-before-end", type=int, default=None,
                        help="--until this many seconds before the feed's end (default 600, less for short feeds)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "backfill.json")
    args = parser.parse_args()
    results = run(args.events, args.format, args.until_before_end)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
