"""``freshet job``: run, submit, restore and stop the Flink delta job.

    freshet job run --bootstrap 127.0.0.1:9092 --defs feature_defs --models models/
    freshet job stop --job-id <id>                       # stop with a savepoint (the clean way to restart)
    freshet job restore --from .freshet/checkpoints/<id>/chk-12     # or a savepoint directory
    freshet job submit --jobmanager flink-jm:8081 --bootstrap kafka:9092 --models /shared/models
    freshet job export-events --bootstrap 127.0.0.1:9092 --out events/     # the raw topics as an event log

``run`` and ``restore`` start a local MiniCluster in this process, with the Flink web UI on the first free port
of ``--rest-port`` (default 8081-8090), and keep running until the job ends or Ctrl-C cancels it. Every run
records its options and Kafka transactional id prefix beside its checkpoints, so ``restore --from`` needs no
other option and resumes as the same job. PyFlink, torch and the JVM are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HELP = "run, restore, submit or stop the Flink delta job (raw events → tensor deltas)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from flink_jobs.options import add_job_arguments
    from flink_jobs.runtime import DEFAULT_REST_PORTS

    sub = parser.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    p = sub.add_parser("run", help="run the delta job on a local MiniCluster with the Flink web UI")
    add_job_arguments(p)
    p = sub.add_parser(
        "restore", help="resume the delta job locally from a retained checkpoint or a savepoint"
    )
    p.add_argument("--from", dest="restore_from", type=Path, required=True, metavar="CHECKPOINT",
                   help="a chk-N or savepoint directory, or a job's checkpoint directory (its newest chk-N)")  # fmt: skip
    add_job_arguments(p)
    p = sub.add_parser("submit", help="submit the delta job to a Flink cluster with `flink run -py`")
    p.add_argument("--jobmanager", required=True, metavar="HOST:PORT")
    p.add_argument(
        "--from", dest="restore_from", type=Path, metavar="CHECKPOINT", help="start from this state"
    )
    p.add_argument("--flink", help="the flink command (default: bin/flink of the PyFlink install)")
    p.add_argument(
        "--python", default=sys.executable, help="Python of the cluster's workers (default: this one)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    add_job_arguments(p)
    p = sub.add_parser("stop", help="stop a running job with a savepoint")
    p.add_argument("--job-id", required=True)
    p.add_argument(
        "--rest", help="the REST URL of its JobManager (default: the local one that knows the job)"
    )
    p.add_argument(
        "--rest-port", default=DEFAULT_REST_PORTS, help="local ports to look in (default %(default)s)"
    )
    p.add_argument(
        "--savepoint-dir", type=Path, help="default: <checkpoint dir>/savepoints (a folder per job)"
    )
    p.add_argument("--checkpoint-dir", type=Path, help="where the job keeps its checkpoints and job record")
    p.add_argument("--timeout-s", type=float, default=300.0)
    _add_export_arguments(sub)


def _add_export_arguments(sub: Any) -> None:
    p = sub.add_parser("export-events", help="write the job's raw topics as an event log (what backfill reads), "
                       "each partition up to its high watermark when the read starts")  # fmt: skip
    p.add_argument(
        "--bootstrap", required=True, metavar="HOST:PORT[,HOST:PORT]", help="Kafka bootstrap servers"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="event log directory (without a log of these topics)"
    )
    p.add_argument("--defs", type=Path, default=Path("feature_defs"), help="feature definitions: the topics")
    p.add_argument("--topic", action="append", metavar="DECLARED=ACTUAL",
                   help="read ACTUAL for a declared topic (as `job run --topic`); logged under DECLARED")  # fmt: skip
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet",
                   help="parquet keeps any bytes; jsonl cannot hold a value with a newline")  # fmt: skip
    p.add_argument("--timeout-s", type=float, default=10.0,
                   help="seconds to wait for the broker, or for a partition that stops moving")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    command = args.job_command
    if command == "run":
        return _run(args, restore_path=None)
    if command == "restore":
        return _run(*_restorable(args))
    if command == "submit":
        return _submit(args)
    if command == "export-events":
        return _export_events(args)
    return _stop(args)


def _export_events(args: argparse.Namespace) -> int:
    from rich.console import Console

    from flink_jobs.raw_topics import export_raw_topics
    from freshet.errors import FreshetError
    from freshet.offline.commands import RichProgress
    from freshet.offline.topics import BOUNDED_NOTE, source_topics
    from freshet.spec import load_feature_set
    from freshet.topic_map import parse_topic_map

    console = Console(stderr=True)
    try:
        topics = source_topics(load_feature_set(args.defs), parse_topic_map(args.topic))
        with RichProgress(console, quiet=False) as progress:
            cuts = export_raw_topics(args.bootstrap, topics, args.out, fmt=args.format, progress=progress,
                                     timeout_s=args.timeout_s)  # fmt: skip
    except FreshetError as exc:
        console.print(f"[red]export failed:[/red] {exc}")
        return 2
    print(json.dumps({"out": str(args.out), "read": BOUNDED_NOTE, "topics": cuts}, indent=2))
    return 0


def _run(args: argparse.Namespace, restore_path: str | None) -> int:
    from flink_jobs.driver import run_attached
    from flink_jobs.options import settings_from_args

    return run_attached(settings_from_args(args, restore_path))


def _restorable(args: argparse.Namespace) -> tuple[argparse.Namespace, str]:
    """The options of the job that wrote the checkpoint, overridden by those given now, and the path."""
    from flink_jobs.options import add_job_arguments, find_job_record

    checkpoint = resolve_checkpoint(Path(args.restore_from))
    record = find_job_record(checkpoint)
    if record is None:
        if args.transactional_id_prefix is None:
            raise SystemExit(
                f"freshet job restore: no job record beside {checkpoint}; give the job's options and its "
                "--transactional-id-prefix (printed when it started) so its Kafka transactions are recovered"
            )
        return args, str(checkpoint)
    stored_parser = argparse.ArgumentParser(add_help=False)
    add_job_arguments(stored_parser)
    stored = stored_parser.parse_args(record["argv"])
    for name, value in vars(stored).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    print(f"restoring job {record['job_id']} from {checkpoint}", file=sys.stderr)
    return args, str(checkpoint)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint or savepoint directory (holding ``_metadata``); a job's directory gives its newest chk-N."""
    path = path.resolve()
    if (path / "_metadata").is_file():
        return path
    done = [p for p in path.glob("chk-*") if (p / "_metadata").is_file() and p.name[4:].isdigit()]
    if not done:
        raise SystemExit(f"freshet job: {path} is no retained checkpoint or savepoint (no _metadata)")
    return max(done, key=lambda p: int(p.name[4:]))


def submit_command(args: argparse.Namespace, flink: str, restore_path: str | None = None) -> list[str]:
    """The ``flink run`` command line that submits the delta job, detached, with its Python files shipped."""
    from flink_jobs.options import settings_argv, settings_from_args
    from flink_jobs.runtime import PROJECT_ROOT

    settings = settings_from_args(args)
    python_files = ",".join(str(PROJECT_ROOT / package) for package in ("freshet", "flink_jobs"))
    command = [flink, "run", "-m", args.jobmanager, "-d", "-py", str(PROJECT_ROOT / "flink_jobs" / "deltas_job.py"),
               "-pyfs", python_files, "-pyexec", args.python, "-pyclientexec", args.python]  # fmt: skip
    if restore_path is not None:
        command += ["-s", restore_path]
    return [*command, *settings_argv(settings), "--detach"]


def flink_command() -> str:
    """``bin/flink`` of the installed PyFlink: the same Flink version as the job was built against."""
    import pyflink

    return str(Path(pyflink.__file__).parent / "bin" / "flink")


def _submit(args: argparse.Namespace) -> int:
    restore_path = None
    if args.restore_from is not None:
        args, restore_path = _restorable(args)
    command = submit_command(args, args.flink or flink_command(), restore_path)
    print(shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(command, check=False).returncode


def _stop(args: argparse.Namespace) -> int:
    from flink_jobs.runtime import DEFAULT_CHECKPOINT_DIR, rest_url

    rest = args.rest or rest_url(args.job_id, args.rest_port)
    if rest is None:
        raise SystemExit(
            f"freshet job stop: no REST API on ports {args.rest_port} knows job {args.job_id}; give --rest"
        )
    checkpoint_dir = Path(args.checkpoint_dir or DEFAULT_CHECKPOINT_DIR)
    target = (Path(args.savepoint_dir or checkpoint_dir / "savepoints") / args.job_id).resolve()
    location = stop_with_savepoint(rest, args.job_id, target, args.timeout_s)
    savepoint = Path(location.removeprefix("file:"))
    record = checkpoint_dir / args.job_id / "freshet-job.json"
    if record.is_file() and savepoint.is_dir():
        shutil.copy(
            record, savepoint / record.name
        )  # so `restore --from <savepoint>` finds the job's options
    print(json.dumps({"job_id": args.job_id, "savepoint": str(savepoint)}), flush=True)
    print(f"stopped; resume with: freshet job restore --from {savepoint}", file=sys.stderr)
    return 0


def stop_with_savepoint(rest: str, job_id: str, target: Path, timeout_s: float) -> str:
    """``POST /jobs/<id>/stop`` into ``target``, and wait for the savepoint; returns its location.

    A local MiniCluster shuts down, REST API included, as soon as its job has stopped; then the savepoint is
    found in ``target``, where it was complete before the job ended.
    """
    trigger = _rest(f"{rest}/jobs/{job_id}/stop", {"drain": False, "targetDirectory": target.as_uri()})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            answer = _rest(f"{rest}/jobs/{job_id}/savepoints/{trigger['request-id']}")
        except OSError:  # refused, reset or closed: the REST API is going or gone
            if done := sorted(target.glob("savepoint-*/_metadata"), key=lambda p: p.stat().st_mtime):
                return str(done[-1].parent)
            time.sleep(0.5)
            continue
        if answer["status"]["id"] == "COMPLETED":
            operation = answer.get("operation", {})
            if "failure-cause" in operation:
                raise SystemExit(f"freshet job stop: the savepoint failed: {operation['failure-cause']}")
            return str(operation["location"])
        time.sleep(0.5)
    raise SystemExit(f"freshet job stop: no savepoint within {timeout_s} s")


def _rest(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as exc:  # an answer, but no success: say what the JobManager said
        raise SystemExit(
            f"freshet job: {url} answered {exc.code}: {exc.read().decode(errors='replace')}"
        ) from None
