"""``freshet job``: options ↔ settings, the job record a restore resumes from, and the `flink run` command."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from flink_jobs import cli
from flink_jobs.options import (
    JOB_FILE,
    add_job_arguments,
    find_job_record,
    job_record,
    settings_argv,
    settings_from_args,
    write_job_record,
)
from flink_jobs.runtime import PROJECT_ROOT
from freshet.cli import build_parser
from freshet.cli import main as freshet_main


def job_options(tmp_path: Path, *extra: str) -> list[str]:
    return ["--bootstrap", "k:9092", "--models", str(tmp_path / "models"), "--checkpoint-dir",
            str(tmp_path / "ckpt"), *extra]  # fmt: skip


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_follow_the_design(tmp_path: Path) -> None:
    settings = settings_from_args(parse(job_options(tmp_path)))
    assert (settings.delta_topic, settings.dlq_topic, settings.job_name) == ("freshet.deltas", "freshet.dlq",
                                                                             "freshet-deltas")  # fmt: skip
    assert settings.flink.checkpoint_interval_ms == 1_000 and settings.flink.rest_ports == "8081-8090"
    assert settings.flink.python_execution_mode == "process", "torch beside other Python operators"
    assert settings.flink.checkpoint_interval_ms < settings.transaction_timeout_ms <= 900_000
    assert settings.transactional_id_prefix.startswith("freshet-deltas-")
    other = settings_from_args(parse(job_options(tmp_path)))
    assert other.transactional_id_prefix != settings.transactional_id_prefix, "unique per job"


def test_settings_round_trip_through_their_options(tmp_path: Path) -> None:
    argv = job_options(tmp_path, "--topic", "engagement=eng.test", "--conf", "python.fn-execution.bundle.size=500",
                       "--parallelism", "2", "--checkpoint-interval-ms", "250", "--job-name", "j", "--group-id", "g",
                       "--log-dir", str(tmp_path / "log"), "--defs", str(PROJECT_ROOT / "feature_defs"),
                       "--source-property", "fetch.max.bytes=1048576")  # fmt: skip
    settings = settings_from_args(parse(argv))
    assert settings.source_properties == {"fetch.max.bytes": "1048576"}
    assert (
        settings.topic("engagement") == "eng.test" and settings.topic("item.attributes") == "item.attributes"
    )
    assert settings.pipeline.embed_shards == 2
    again = settings_from_args(parse(settings_argv(settings)))
    assert again == settings


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bootstrap", "k:1"], "--models required"),
        (
            ["--bootstrap", "k:1", "--models", "m", "--topic", "x"],
            "freshet job: --topic wants DECLARED=ACTUAL, got 'x'",
        ),
        (["--bootstrap", "k:1", "--models", "m", "--topic", "x="], "--topic wants DECLARED=ACTUAL, got 'x='"),
        (["--bootstrap", "k:1", "--models", "m", "--conf", "x"], "--conf wants KEY=VALUE, got 'x'"),
    ],
)
def test_missing_or_malformed_options_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        settings_from_args(parse(argv))


def fake_checkpoints(tmp_path: Path, job_id: str = "a" * 32) -> Path:
    job_dir = tmp_path / "ckpt" / job_id
    for n, complete in ((3, True), (7, True), (9, False), (12, True)):
        (job_dir / f"chk-{n}").mkdir(parents=True)
        if complete:
            (job_dir / f"chk-{n}" / "_metadata").write_bytes(b"x")
    (job_dir / "chk-12" / "_metadata").unlink()  # in progress
    return job_dir


def test_a_restore_takes_the_newest_complete_checkpoint_and_the_recorded_options(tmp_path: Path) -> None:
    job_dir = fake_checkpoints(tmp_path)
    assert cli.resolve_checkpoint(job_dir) == job_dir.resolve() / "chk-7"
    assert cli.resolve_checkpoint(job_dir / "chk-3") == job_dir.resolve() / "chk-3"
    with pytest.raises(SystemExit, match="no retained checkpoint"):
        cli.resolve_checkpoint(job_dir / "chk-9")

    settings = settings_from_args(parse(job_options(tmp_path, "--delta-topic", "d1")))
    record = job_record(settings, job_dir.name)
    assert write_job_record(settings, record) == job_dir / JOB_FILE
    assert find_job_record(job_dir / "chk-7") == record

    args = build_parser().parse_args(["job", "restore", "--from", str(job_dir), "--parallelism", "3"])
    restored_args, path = cli._restorable(args)
    restored = settings_from_args(restored_args, path)
    assert path == str(job_dir.resolve() / "chk-7") and restored.flink.restore_path == path
    assert restored.transactional_id_prefix == settings.transactional_id_prefix, "the same Kafka transactions"
    assert (restored.delta_topic, restored.flink.parallelism) == ("d1", 3), "recorded, then given now"


def test_a_restore_without_a_record_needs_the_transactional_id_prefix(tmp_path: Path) -> None:
    job_dir = fake_checkpoints(tmp_path)
    args = build_parser().parse_args(["job", "restore", "--from", str(job_dir), *job_options(tmp_path)])
    with pytest.raises(SystemExit, match="--transactional-id-prefix"):
        cli._restorable(args)


def test_submit_builds_a_detached_flink_run_shipping_the_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["job", "submit", "--jobmanager", "jm:8081", "--dry-run", *job_options(tmp_path)]
    assert freshet_main(argv) == 0
    command = shlex.split(capsys.readouterr().out.strip())
    assert command[0] == cli.flink_command() and Path(command[0]).name == "flink"
    assert command[1:5] == ["run", "-m", "jm:8081", "-d"]
    assert command[command.index("-py") + 1] == str(PROJECT_ROOT / "flink_jobs" / "deltas_job.py")
    assert command[command.index("-pyfs") + 1].split(",") == [str(PROJECT_ROOT / "freshet"),
                                                              str(PROJECT_ROOT / "flink_jobs")]  # fmt: skip
    assert command[-1] == "--detach"
    job_argv = command[command.index("-pyclientexec") + 2 : -1]
    settings = settings_from_args(parse(job_argv))
    assert settings.bootstrap == "k:9092" and settings.flink.checkpoint_dir == (tmp_path / "ckpt").resolve()


def test_submit_from_a_checkpoint_resumes_the_recorded_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_dir = fake_checkpoints(tmp_path)
    settings = settings_from_args(parse(job_options(tmp_path)))
    write_job_record(settings, job_record(settings, job_dir.name))
    assert (
        freshet_main(["job", "submit", "--jobmanager", "jm:8081", "--dry-run", "--from", str(job_dir)]) == 0
    )
    command = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert command[command.index("-s") + 1] == str(job_dir.resolve() / "chk-7")
    assert command[command.index("--transactional-id-prefix") + 1] == settings.transactional_id_prefix
    assert json.loads((job_dir / JOB_FILE).read_text())["job_id"] == job_dir.name
