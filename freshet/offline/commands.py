"""``freshet backfill``, ``freshet verify`` and ``freshet feed``: arguments and entry points.

Only argparse and pathlib at import time, so ``freshet --help`` stays fast; each command imports what
it runs (numpy, torch, rich, httpx) when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

DEFAULT_DEFS = Path("feature_defs")
#: the synthetic feed starts here unless told otherwise: a UTC midnight, so windows of every size align
FEED_START = "2023-11-14T00:00:00Z"


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds from an integer or an ISO-8601 time with a zone.

    >>> parse_time_ms("1700000000000"), parse_time_ms("2023-11-14T22:13:20Z")
    (1700000000000, 1700000000000)
    """
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not epoch ms or an ISO-8601 time with a zone (…Z)")
    return int(parsed.timestamp() * 1000)


def parse_until(text: str) -> int | None:
    """``end`` (the end of the log: ``None``) or a time for ``parse_time_ms``."""
    return None if text == "end" else parse_time_ms(text)


# ---------------------------------------------------------------- backfill


def add_backfill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--defs", type=Path, default=DEFAULT_DEFS, help="feature definitions (file or directory)")
    p.add_argument("--events", type=_parse_events, required=True,
                   help="event log: DIR/<topic>/*.jsonl|*.parquet per source topic, in arrival order; or "
                        "kafka://HOST:PORT[,HOST:PORT]: the raw topics, read up to where they are now")  # fmt: skip
    p.add_argument("--topic", action="append", metavar="DECLARED=ACTUAL",
                   help="with kafka://: read ACTUAL for a declared topic (as the job's --topic)")  # fmt: skip
    p.add_argument("--kafka-timeout", type=float, default=10.0,
                   help="with kafka://: seconds to wait for the broker, or for a partition that stops moving")  # fmt: skip
    p.add_argument("--until", type=parse_until, required=True,
                   help="watermark to compute the state at: epoch ms, ISO-8601 (…Z), or 'end'")  # fmt: skip
    p.add_argument("--models", type=Path, default=Path("models"), help="published models root")
    p.add_argument("--model-version", type=int, default=None, help="published version to embed with (newest)")
    p.add_argument("--embed-batch", type=int, default=1024,
                   help="items per forward pass of the item tower; float32 results depend on it: 1 reproduces a "
                        "job run with --embed-batch-size 1 bit for bit")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="snapshot root to publish the result under")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run_backfill(args: argparse.Namespace) -> int:
    from rich.console import Console

    from freshet.errors import FreshetError
    from freshet.offline.backfill import backfill
    from freshet.snapshot import write_snapshot
    from freshet.spec import load_feature_set

    console = Console(stderr=True)
    try:
        feature_set = load_feature_set(args.defs)
        with RichProgress(console, quiet=args.quiet) as progress, \
                _event_log(args, feature_set, progress) as (events_dir, read):  # fmt: skip
            result = backfill(feature_set, events_dir, args.until, args.models,
                              model_version=args.model_version, embed_batch=args.embed_batch,
                              progress=progress)  # fmt: skip
            progress.stage("writing the snapshot")
            path = write_snapshot(result.model, args.out, offsets={})
    except FreshetError as exc:
        console.print(f"[red]backfill failed:[/red] {exc}")
        return 2
    summary = {"snapshot": str(path), **result.summary(), **read}
    _print_summary(console, summary)
    print(json.dumps(summary, indent=2))
    return 0


def _parse_events(text: str) -> Any:
    from freshet.offline.topics import TopicsError, parse_events

    try:
        return parse_events(text)
    except TopicsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


@contextmanager
def _event_log(
    args: argparse.Namespace, feature_set: Any, progress: Any
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The event directory to backfill from, and what the summary says about it (a topic read's cut).

    A ``kafka://`` address is read into a temporary log first, removed once backfill has read it.
    """
    from freshet.offline.topics import BOUNDED_NOTE, KafkaEvents, exported, source_topics
    from freshet.topic_map import parse_topic_map

    if not isinstance(args.events, KafkaEvents):
        yield args.events, {}
        return
    topics = source_topics(feature_set, parse_topic_map(args.topic))
    with exported(args.events, topics, progress=progress, timeout_s=args.kafka_timeout) as (directory, cuts):
        yield directory, {"kafka": {"bootstrap": args.events.bootstrap, "read": BOUNDED_NOTE, "topics": cuts}}


class RichProgress:
    """``freshet.offline.backfill.Progress`` as a rich progress display on stderr."""

    def __init__(self, console: Any, *, quiet: bool) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
        self._bar = Progress(*columns, console=console, disable=quiet)
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()
        self._bar.stop()

    def stage(self, description: str, total: int | None = None) -> None:
        self._finish()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, amount)

    def _finish(self) -> None:
        if self._task is not None:
            task = self._bar.tasks[-1]
            self._bar.update(self._task, total=task.total or 1, completed=task.total or 1)


def _print_summary(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"backfill → {summary['snapshot']}", title_justify="left")
    for column in ("source", "records", "events", "rejected by reason", "after until", "log cut"):
        table.add_column(column)
    for name, s in summary["sources"].items():
        rejected = "\n".join(f"{k} {v:,}" for k, v in s["rejected"].items()) or "-"
        after = summary["after_until"].get(name, 0)
        table.add_row(
            name, f"{s['records']:,}", f"{s['events']:,}", rejected, f"{after:,}", "yes" if s["cut"] else "no"
        )
    console.print(table)
    late = ", ".join(f"{k} {v}" for k, v in summary["too_late"].items() if v) or "none"
    console.print(f"too late for every window: {late}")
    console.print(f"{summary['items']:,} items, cells {summary['cells']}, digest {summary['digest']}")
    if "kafka" in summary:
        kafka = summary["kafka"]
        console.print(f"read from kafka://{kafka['bootstrap']}: {kafka['read']}")


# ---------------------------------------------------------------- verify


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "a", help="a replica (http://host:port), a snapshot directory, or a snapshot root (newest)"
    )
    p.add_argument("b", help="the other side, the same kinds")
    p.add_argument("--defs", type=Path, default=DEFAULT_DEFS, help="feature definitions (to read snapshots)")
    p.add_argument("--show", type=int, default=10, help="differing items to print")
    p.add_argument("--admin-token", default=None,
                   help="a replica's admin token: it writes a snapshot, compared in full")  # fmt: skip
    p.add_argument("--probe-limit", type=int, default=100_000,
                   help="most items fetched one by one from a replica without the token")  # fmt: skip
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout, seconds")


def run_verify(args: argparse.Namespace) -> int:
    from freshet.errors import FreshetError
    from freshet.offline.verify import compare, open_side
    from freshet.spec import load_feature_set

    try:
        layout = load_feature_set(args.defs).layout()
        a = open_side(args.a, layout, admin_token=args.admin_token, timeout_s=args.timeout)
        b = open_side(args.b, layout, admin_token=args.admin_token, timeout_s=args.timeout)
        report = compare(a, b, layout, show=args.show, probe_limit=args.probe_limit)
    except FreshetError as exc:
        print(f"verify failed: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    return 0 if report.equal else 1


# ---------------------------------------------------------------- feed


def add_feed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="event log directory to append to")
    p.add_argument("--seconds", type=int, required=True, help="seconds of event time to generate")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    p.add_argument(
        "--start", type=parse_time_ms, default=parse_time_ms(FEED_START), help="event time of second 0"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=400.0, help="engagement events per second")
    p.add_argument("--posts", type=float, default=20.0, help="new posts per second")


def run_feed(args: argparse.Namespace) -> int:
    from freshet.feedgen import FeedConfig, FeedGenerator
    from freshet.offline.eventlog import write_event_log

    config = FeedConfig(seed=args.seed, engagements_per_s=args.rate, posts_per_s=args.posts)
    records = FeedGenerator(config, start_ms=args.start).records(args.seconds)
    counts = write_event_log(records, args.out, args.format)
    print(json.dumps({"out": str(args.out), "start_ms": args.start, "end_ms": args.start + 1000 * args.seconds,
                      "records": counts}, indent=2))  # fmt: skip
    return 0
