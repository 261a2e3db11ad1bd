"""``freshet demo``: flags; the work is in ``demo.run`` (imported only when the command runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "run the whole pipeline on the embedded default (broker, Flink MiniCluster, a replica) with a live view"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--defs", type=Path, default=Path("feature_defs"), help="feature definitions")
    parser.add_argument(
        "--work-dir", type=Path, default=Path(".freshet/demo"), help="logs, models, snapshots"
    )
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    parser.add_argument("--port", type=int, default=8000, help="the replica's HTTP port")
    parser.add_argument("--rest-port", default="8081-8090", help="Flink web UI port range")
    parser.add_argument("--rate", type=float, default=300.0, help="engagement events per second")
    parser.add_argument("--posts", type=float, default=5.0, help="new posts per second")
    parser.add_argument("--history", type=int, default=60, help="seconds of generated history sent first")
    parser.add_argument("--events", type=Path, default=None,
                        help="where to log every raw record sent, as freshet backfill reads it (an empty or new "
                             "directory; default WORK_DIR/events)")  # fmt: skip
    parser.add_argument("--verify", action="store_true",
                        help="when stopping (Ctrl-C or --seconds): drain the pipeline, backfill the logged events "
                             "and run freshet verify against the replica; exit with verify's code")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from demo.run import DemoSettings, run

    return run(
        DemoSettings(
            defs=args.defs,
            work_dir=args.work_dir,
            seconds=args.seconds,
            replica_port=args.port,
            rest_ports=args.rest_port,
            engagements_per_s=args.rate,
            posts_per_s=args.posts,
            history_seconds=args.history,
            events_dir=args.events,
            verify=args.verify,
        )
    )
