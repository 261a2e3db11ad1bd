"""Build a Flink execution environment the way every freshet job needs it on a local MiniCluster.

Only configuration lives here, no job logic::

    settings = FlinkSettings(parallelism=2, checkpoint_dir=Path("/tmp/ckpt"))
    env, t_env = table_environment(settings)

What it sets, and why (measured facts are in ENVIRONMENT.md):

- ``python.executable`` / ``python.client.executable`` = this interpreter: otherwise Python workers start a Python
  without pyflink and the job restarts in a loop;
- ``PYTHONPATH`` with this venv's site-packages and the project root: thread mode embeds an interpreter in the
  JVM that does not see the venv otherwise (``No module named 'pemja'``);
- the Kafka connector jars (``pipeline.jars``), verified by ``flink_jobs.connector``, and the project's own
  JVM operators compiled by ``flink_jobs.javaops``;
- EXACTLY_ONCE checkpoints, retained on cancel, so a job can be restored (``execution.state-recovery.path``);
- the REST API / web UI on a port range (a fixed port collides with a second local job).

The JVM gateway starts on the first PyFlink call of a process and keeps the environment variables it saw then:
build the environment through this module before any other PyFlink call.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from flink_jobs import connector, javaops

if TYPE_CHECKING:
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT_DIR = PROJECT_ROOT / ".freshet" / "checkpoints"
DEFAULT_REST_PORTS = "8081-8090"


@dataclass(frozen=True)
class FlinkSettings:
    """How a local freshet job runs. ``extra`` is merged last and may override any key."""

    parallelism: int = 1
    checkpoint_interval_ms: int = 1_000
    checkpoint_min_pause_ms: int = 0
    checkpoint_dir: Path = DEFAULT_CHECKPOINT_DIR
    #: completed checkpoints kept on disk: replica snapshots name one, and a replay restores from it, so keep
    #: at least (snapshot period x snapshots retained) / checkpoint interval of them
    checkpoints_retained: int = 30
    restore_path: str | None = None
    rest_ports: str = DEFAULT_REST_PORTS
    python_execution_mode: Literal["process", "thread"] = "process"
    log_dir: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


def flink_configuration(settings: FlinkSettings) -> dict[str, str]:
    """The Flink configuration for ``settings`` as plain key/value strings (no JVM needed).

    >>> conf = flink_configuration(FlinkSettings(checkpoint_interval_ms=500, extra={"pipeline.jars": "x"}))
    >>> conf["execution.checkpointing.interval"], conf["execution.checkpointing.mode"], conf["pipeline.jars"]
    ('500 ms', 'EXACTLY_ONCE', 'x')
    """
    conf = {
        "parallelism.default": str(settings.parallelism),
        "execution.checkpointing.interval": f"{settings.checkpoint_interval_ms} ms",
        "execution.checkpointing.min-pause": f"{settings.checkpoint_min_pause_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": str(settings.checkpoints_retained),
        "execution.checkpointing.dir": Path(settings.checkpoint_dir).resolve().as_uri(),
        "rest.bind-address": "127.0.0.1",
        "rest.bind-port": settings.rest_ports,
        # Fresh checkpoint statistics over REST (cached for web.refresh-interval, 3 s, otherwise): tools and
        # tests that align with "the latest completed checkpoint" must not read a stale answer.
        "rest.cache.checkpoint-statistics.timeout": "0 ms",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.execution-mode": settings.python_execution_mode,
    }
    if settings.restore_path:
        conf["execution.state-recovery.path"] = settings.restore_path
    if "pipeline.jars" not in settings.extra:
        conf["pipeline.jars"] = pipeline_jars()
    conf.update(settings.extra)
    return conf


def pipeline_jars() -> str:
    """The ``pipeline.jars`` value: the connector jars and the operators' jar as ``file://`` URLs, ``;``-joined."""
    return ";".join(p.as_uri() for p in [*connector.jar_paths(), *javaops.jar_paths()])


def python_path() -> str:
    """``PYTHONPATH`` for Python code run inside the JVM: the project root, this venv's site-packages, then any
    existing entries."""
    entries = [str(PROJECT_ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    entries += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(entries))


def prepare_process_environment(settings: FlinkSettings) -> None:
    """Set the environment variables the JVM gateway reads when it starts (``PYTHONPATH``, ``FLINK_LOG_DIR``)."""
    os.environ["PYTHONPATH"] = python_path()
    if settings.log_dir is not None:
        Path(settings.log_dir).mkdir(parents=True, exist_ok=True)
        os.environ["FLINK_LOG_DIR"] = str(Path(settings.log_dir).resolve())


def stream_environment(settings: FlinkSettings | None = None) -> StreamExecutionEnvironment:
    """A ``StreamExecutionEnvironment`` configured by ``settings`` (defaults: ``FlinkSettings()``)."""
    settings = settings or FlinkSettings()
    prepare_process_environment(settings)
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    config = Configuration()
    for key, value in flink_configuration(settings).items():
        config.set_string(key, value)
    return StreamExecutionEnvironment.get_execution_environment(config)


def table_environment(
    settings: FlinkSettings | None = None,
) -> tuple[StreamExecutionEnvironment, StreamTableEnvironment]:
    """A stream environment and a ``StreamTableEnvironment`` on top of it, for jobs that mix both APIs."""
    from pyflink.table import StreamTableEnvironment

    env = stream_environment(settings)
    return env, StreamTableEnvironment.create(env)


def rest_url(job_id: str, ports: str = DEFAULT_REST_PORTS, host: str = "127.0.0.1") -> str | None:
    """The base URL of the local REST API that knows ``job_id`` (scans ``ports``), or ``None``."""
    for port in port_range(ports):
        url = f"http://{host}:{port}"
        try:
            with urllib.request.urlopen(f"{url}/jobs/{job_id}", timeout=1) as response:
                if json.load(response).get("jid") == job_id:
                    return url
        except (OSError, ValueError, urllib.error.URLError):
            continue
    return None


def port_range(ports: str) -> Iterable[int]:
    """The ports of a Flink port spec such as ``"8081-8090"`` or ``"8081,8085"``.

    >>> list(port_range("8081-8083,8090"))
    [8081, 8082, 8083, 8090]
    """
    for part in ports.split(","):
        low, _, high = part.strip().partition("-")
        yield from range(int(low), int(high or low) + 1)
