"""The delta job's settings, its command-line options, and the record a restore resumes from.

Every run writes ``<checkpoint dir>/<job id>/freshet-job.json``: its options (``settings_argv``) and its Kafka
transactional id prefix, so that ``freshet job restore --from <checkpoint>`` resumes the same job (its Kafka
sinks recover their transactions by that prefix) without the user repeating any option.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flink_jobs import runtime
from flink_jobs.sinks import unique_transactional_id_prefix
from freshet.topic_map import TopicMapError, parse_topic_map

JOB_FILE = "freshet-job.json"
DEFAULT_JOB_NAME = "freshet-deltas"


@dataclass(frozen=True)
class PipelineSettings:
    """What the computation needs besides the feature definitions."""

    models_dir: Path
    embed_batch_size: int = 64
    embed_linger_ms: int = 200
    model_poll_ms: int = 5_000
    #: keys of the embedding operator (item id modulo this): its parallelism at most
    embed_shards: int = 1
    #: windowed features in the JVM (``dev.freshet.flink``, the fast path) or in the Python ``WindowedFeatures``
    window_operator: str = "jvm"


@dataclass(frozen=True)
class JobSettings:
    """Everything a run of the delta job needs; ``settings_argv`` gives it back as command-line options."""

    bootstrap: str
    pipeline: PipelineSettings
    defs: Path = Path("feature_defs")
    flink: runtime.FlinkSettings = field(default_factory=runtime.FlinkSettings)
    job_name: str = DEFAULT_JOB_NAME
    delta_topic: str = "freshet.deltas"
    dlq_topic: str = "freshet.dlq"
    #: declared topic → topic actually read or written (sources and late-data topics)
    topic_map: Mapping[str, str] = field(default_factory=dict)
    #: unique per job, and the same when the job is restored (its Kafka sinks recover their transactions)
    transactional_id_prefix: str = ""
    transaction_timeout_ms: int = 600_000
    group_id: str = ""
    #: Kafka consumer properties of every source (``fetch.max.bytes``, ``security.protocol``, ...)
    source_properties: Mapping[str, str] = field(default_factory=dict)

    def topic(self, declared: str) -> str:
        return self.topic_map.get(declared, declared)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a delta-job run; all default to ``None`` so a restore can take the stored ones."""
    add = parser.add_argument
    add("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers")
    add("--defs", type=Path, help="feature definitions: a YAML file or directory (default feature_defs)")
    add("--models", type=Path, help="published models root (<root>/<model>/v00000001/)")
    add("--delta-topic", help="topic of the deltas (default freshet.deltas)")
    add("--dlq-topic", help="dead-letter topic (default freshet.dlq)")
    add(
        "--topic",
        action="append",
        metavar="DECLARED=ACTUAL",
        help="read/write ACTUAL instead of a declared topic",
    )
    add("--group-id", help="Kafka consumer group of the sources (default: the job name)")
    add(
        "--source-property",
        action="append",
        metavar="KEY=VALUE",
        help="a Kafka consumer property of every source, e.g. fetch.max.bytes=1048576",
    )
    add(
        "--job-name",
        help=f"Flink job name, Kafka group id and transactional id stem (default {DEFAULT_JOB_NAME})",
    )
    add("--transactional-id-prefix", help="default: <job name>-<random>, kept across restores")
    add("--transaction-timeout-ms", type=int, help="Kafka producer transaction timeout (default 600000)")
    add("--checkpoint-interval-ms", type=int, help="default 1000")
    add(
        "--checkpoint-dir", type=Path, help=f"retained checkpoints (default {runtime.DEFAULT_CHECKPOINT_DIR})"
    )
    add("--parallelism", type=int, help="default 1")
    add(
        "--rest-port",
        help=f"port range of the Flink web UI / REST API (default {runtime.DEFAULT_REST_PORTS})",
    )
    add("--embed-batch-size", type=int, help="items per item-tower call (default 64)")
    add("--embed-linger-ms", type=int, help="longest wait to fill an embedding batch (default 200)")
    add("--model-poll-ms", type=int, help="how often to look for a newer published model (default 5000)")
    add("--window-operator", choices=("jvm", "python"), help="where windowed features run (default jvm)")
    add("--log-dir", type=Path, help="Flink log directory")
    add("--conf", action="append", metavar="KEY=VALUE", help="any Flink configuration option")


def settings_from_args(args: argparse.Namespace, restore_path: str | None = None) -> JobSettings:
    """``JobSettings`` from parsed options (``None`` means the default); raises ``SystemExit`` on a missing one."""
    missing = [f"--{n}" for n in ("bootstrap", "models") if getattr(args, n, None) is None]
    if missing:
        raise SystemExit(f"freshet job: {' and '.join(missing)} required")
    job_name = args.job_name or DEFAULT_JOB_NAME
    pick = _picker(args)
    parallelism = pick("parallelism", 1)
    flink = runtime.FlinkSettings(
        parallelism=parallelism,
        checkpoint_interval_ms=pick("checkpoint_interval_ms", 1_000),
        checkpoint_dir=pick("checkpoint_dir", runtime.DEFAULT_CHECKPOINT_DIR),
        restore_path=restore_path,
        rest_ports=pick("rest_port", runtime.DEFAULT_REST_PORTS),
        log_dir=args.log_dir,
        extra=_pairs(args.conf, "--conf"),
    )
    pipeline = PipelineSettings(
        Path(args.models),
        embed_batch_size=pick("embed_batch_size", 64),
        embed_linger_ms=pick("embed_linger_ms", 200),
        model_poll_ms=pick("model_poll_ms", 5_000),
        embed_shards=parallelism,
        window_operator=pick("window_operator", "jvm"),
    )
    return JobSettings(
        args.bootstrap,
        pipeline,
        defs=pick("defs", Path("feature_defs")),
        flink=flink,
        job_name=job_name,
        delta_topic=pick("delta_topic", "freshet.deltas"),
        dlq_topic=pick("dlq_topic", "freshet.dlq"),
        topic_map=_topic_map(args.topic),
        transactional_id_prefix=args.transactional_id_prefix or unique_transactional_id_prefix(job_name),
        transaction_timeout_ms=pick("transaction_timeout_ms", 600_000),
        group_id=pick("group_id", ""),
        source_properties=_pairs(getattr(args, "source_property", None), "--source-property"),
    )


def _picker(args: argparse.Namespace) -> Any:
    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    return pick


def _topic_map(pairs: Sequence[str] | None) -> dict[str, str]:
    try:
        return parse_topic_map(pairs)
    except TopicMapError as exc:
        raise SystemExit(f"freshet job: {exc}") from exc


def _pairs(items: Sequence[str] | None, option: str) -> dict[str, str]:
    """``["a=b", ...]`` → ``{"a": "b"}`` (``--conf``, ``--source-property``; a value may be empty or hold ``=``).

    >>> _pairs(["parallelism.default=2", "env.java.opts=-Dx=y"], "--conf")
    {'parallelism.default': '2', 'env.java.opts': '-Dx=y'}
    """
    pairs = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"freshet job: {option} wants KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def settings_argv(settings: JobSettings) -> list[str]:
    """Options that ``settings_from_args`` turns back into ``settings`` (less the restore path)."""
    flink, pipeline = settings.flink, settings.pipeline
    options: dict[str, object] = {
        "bootstrap": settings.bootstrap, "defs": Path(settings.defs).resolve(),
        "models": Path(pipeline.models_dir).resolve(),
        "delta-topic": settings.delta_topic, "dlq-topic": settings.dlq_topic, "job-name": settings.job_name,
        "transactional-id-prefix": settings.transactional_id_prefix,
        "transaction-timeout-ms": settings.transaction_timeout_ms,
        "checkpoint-interval-ms": flink.checkpoint_interval_ms, "checkpoint-dir": Path(flink.checkpoint_dir).resolve(),
        "parallelism": flink.parallelism, "rest-port": flink.rest_ports,
        "embed-batch-size": pipeline.embed_batch_size, "embed-linger-ms": pipeline.embed_linger_ms,
        "model-poll-ms": pipeline.model_poll_ms, "window-operator": pipeline.window_operator,
    }  # fmt: skip
    argv = [item for name, value in options.items() for item in (f"--{name}", str(value))]
    if settings.group_id:
        argv += ["--group-id", settings.group_id]
    if flink.log_dir is not None:
        argv += ["--log-dir", str(Path(flink.log_dir).resolve())]
    argv += [item for k, v in settings.topic_map.items() for item in ("--topic", f"{k}={v}")]
    argv += [
        item for k, v in settings.source_properties.items() for item in ("--source-property", f"{k}={v}")
    ]
    argv += [item for k, v in flink.extra.items() for item in ("--conf", f"{k}={v}")]
    return argv


def job_record(settings: JobSettings, job_id: str) -> dict[str, Any]:
    """What a later ``restore`` needs to resume this job as the same job: its options and transactional ids."""
    return {"job_id": job_id, "job_name": settings.job_name, "argv": settings_argv(settings),
            "transactional_id_prefix": settings.transactional_id_prefix}  # fmt: skip


def write_job_record(settings: JobSettings, record: Mapping[str, Any]) -> Path:
    """Store ``record`` beside the job's checkpoints: ``<checkpoint dir>/<job id>/freshet-job.json``."""
    path = Path(settings.flink.checkpoint_dir) / str(record["job_id"]) / JOB_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return path


def find_job_record(checkpoint: Path) -> dict[str, Any] | None:
    """The record of the job a checkpoint (``.../<job id>/chk-N``) or savepoint directory belongs to."""
    for candidate in (checkpoint / JOB_FILE, checkpoint.parent / JOB_FILE):
        if candidate.is_file():
            record: dict[str, Any] = json.loads(candidate.read_text())
            return record
    return None
