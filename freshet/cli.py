"""The ``freshet`` command line.

argparse (stdlib) rather than click/typer: the CLI is a thin dispatcher. The adapters own their
sub-commands (``serving.cli``, ``flink_jobs.cli``, ``demo.cli``: ``HELP``, ``add_arguments``, ``main``) and are
found by module name, so the pure core never imports them (the import-linter contract stays true)
and ``freshet validate`` never loads PyFlink, torch or FastAPI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

DEFAULT_DEFS = Path("feature_defs")


def _cmd_validate(args: argparse.Namespace) -> int:
    from freshet.spec import load_feature_set, validate_paths

    problems = validate_paths(list(args.paths))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    for path in args.paths:
        layout = load_feature_set(path).layout()
        print(
            f"{path}: ok (layout {layout.layout_hash}: {layout.embedding_dim}-dim embedding, "
            f"{layout.num_features} feature columns, {len(layout.exact_bits)} exact bits, "
            f"{len(layout.bloom_fields)} Bloom fields)"
        )
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from freshet.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from freshet.broker import main as broker_main

    return int(broker_main(args.broker_args))


def _cmd_model(args: argparse.Namespace) -> int:
    if args.model_command == "publish":
        from freshet.training import main_publish

        return main_publish(args.defs, args.models, pairs=args.pairs, epochs=args.epochs, seed=args.seed)
    from freshet.publish import versions
    from freshet.spec import load_feature_set

    emb = load_feature_set(args.defs).embedding
    name = emb.model if emb else "-"
    found = versions(args.models, name)
    print(f"{name}: " + (", ".join(f"v{v}" for v in found) if found else "no published version"))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    import os
    import shlex

    from freshet.recovery import RecoveryError, plan, replica_url, stage_snapshot
    from freshet.spec import load_feature_set

    layout = load_feature_set(args.defs).layout()
    try:
        steps = plan(args.snapshot, layout, args.replica_dir, job_args=shlex.split(args.job_args),
                     serve_args=["--defs", str(args.defs), *shlex.split(args.serve_args)])  # fmt: skip
    except RecoveryError as exc:
        print(f"freshet replay: {exc}", file=sys.stderr)
        return 2
    print(f"snapshot   {steps.snapshot}\ncheckpoint {steps.checkpoint}\n"
          f"1. {shlex.join(steps.job_command)}\n2. {shlex.join(steps.replica_command)}", file=sys.stderr)  # fmt: skip
    if args.dry_run:
        return 0
    try:
        stage_snapshot(steps.snapshot, steps.replica_dir)
    except RecoveryError as exc:
        print(f"freshet replay: {exc}", file=sys.stderr)
        return 2
    url = replica_url(shlex.split(args.serve_args), os.environ)
    print(f"waiting for the replica at {url} to become ready", file=sys.stderr)
    return _run_until_one_ends([steps.job_command, steps.replica_command], _ReadyReporter(url))


class _ReadyReporter:
    """Asks the replica, about once a second, whether it is ready; says so once, with its digest."""

    def __init__(self, url: str) -> None:
        self.url, self.reported, self._next_s = url, False, 0.0

    def __call__(self, now_s: float) -> None:
        from freshet.recovery import ready_line, ready_state

        if self.reported or now_s < self._next_s:
            return
        self._next_s = now_s + 1.0
        state = ready_state(self.url)
        if state is not None:
            self.reported = True
            print(f"freshet replay: {ready_line(self.url, state)}", file=sys.stderr, flush=True)


def _run_until_one_ends(commands: list[list[str]], tick: Callable[[float], None] | None = None) -> int:
    """Run the commands side by side until one ends or this process is asked to stop; then stop the rest.
    ``tick(monotonic_s)`` runs between checks (the replay's readiness probe)."""
    import signal
    import subprocess
    import time

    procs = [subprocess.Popen(c) for c in commands]
    stop = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.append(True))
    while not stop and all(p.poll() is None for p in procs):
        if tick is not None:
            tick(time.monotonic())
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # the job driver cancels its job (checkpoint retained)
    codes = [p.wait(timeout=120) for p in procs]
    return 0 if stop else max(abs(c) for c in codes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freshet", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check feature definitions; report every problem at once")
    p.add_argument("paths", nargs="*", type=Path, default=[DEFAULT_DEFS], help="YAML files or directories")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("schema", help="print the JSON schema of feature_defs/*.yaml (for editors)")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker in the foreground")
    p.add_argument("broker_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("model", help="train and publish the two-tower model; list published versions")
    msub = p.add_subparsers(dest="model_command", required=True)
    for name, text in (
        ("publish", "train on synthetic interactions and publish atomically"),
        ("list", "list versions"),
    ):
        m = msub.add_parser(name, help=text)
        m.add_argument(
            "--defs", type=Path, default=DEFAULT_DEFS, help="feature definitions (file or directory)"
        )
        m.add_argument("--models", type=Path, default=Path("models"), help="published models root")
        if name == "publish":
            m.add_argument("--pairs", type=int, default=20_000, help="synthetic interactions to train on")
            m.add_argument("--epochs", type=int, default=3)
            m.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_model)

    p = sub.add_parser("replay", help="recover the pipeline from a snapshot: the job from the checkpoint it "
                       "names, a replica from the snapshot")  # fmt: skip
    p.add_argument("snapshot", type=Path, help="a snapshot, or a snapshot directory (its newest valid one)")
    p.add_argument(
        "--replica-dir", type=Path, required=True, help="an empty snapshot directory for the replica"
    )
    p.add_argument("--defs", type=Path, default=DEFAULT_DEFS, help="feature definitions (file or directory)")
    p.add_argument(
        "--job-args", default="", help='more `freshet job restore` options, e.g. "--bootstrap H:P"'
    )
    p.add_argument(
        "--serve-args", default="", help='more `freshet serve` options, e.g. "--port 8001 --models m"'
    )
    p.add_argument("--dry-run", action="store_true", help="check and print the two commands; start nothing")
    p.set_defaults(func=_cmd_replay)

    _add_offline_commands(sub)
    _add_adapter_commands(sub)
    return parser


def _add_offline_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``backfill``, ``verify`` and ``feed`` (``freshet.offline.commands``: light to import)."""
    from freshet.offline import commands

    for name, text, add, run in (
        ("backfill", "compute the stream's tensors from logged events up to a watermark; write a snapshot",
         commands.add_backfill_arguments, commands.run_backfill),
        ("verify", "compare two replicas/snapshots/backfills: equal, or the first differing items",
         commands.add_verify_arguments, commands.run_verify),
        ("feed", "write the synthetic feed as an event log (the layout backfill reads)",
         commands.add_feed_arguments, commands.run_feed),
    ):  # fmt: skip
        p = sub.add_parser(name, help=text)
        add(p)
        p.set_defaults(func=run)


def _add_adapter_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Sub-commands owned by the adapters (``serving``, ``flink_jobs``, ``demo``), registered if installed."""
    import importlib

    for name, module in (("serve", "serving.cli"), ("job", "flink_jobs.cli"), ("demo", "demo.cli")):
        try:
            adapter = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name not in (module, module.split(".")[0]):
                raise
            continue
        p = sub.add_parser(name, help=adapter.HELP)
        adapter.add_arguments(p)
        p.set_defaults(func=adapter.main)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
