"""Settings of one serving replica: a frozen pydantic model filled from flags, then ``FRESHET_*`` env vars.

Precedence: a command-line flag, else the environment variable ``FRESHET_<FIELD>`` (upper case), else the
default. Plain pydantic does the type coercion (strings from the environment become ints, floats, paths),
so the project does not need ``pydantic-settings`` for a dozen or so flat fields.

Several replicas on one machine differ by ``port`` and ``snapshot_dir``: each replica writes and prunes
its own snapshot directory (two replicas pruning one directory would delete each other's snapshots).
A new replica may *start from* another replica's directory by pointing ``snapshot_dir`` at it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

ENV_PREFIX = "FRESHET_"
KafkaClient = Literal["kafka-python", "confluent-kafka"]


class Settings(BaseModel):
    """Everything a replica needs to start; immutable once built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated")
    kafka_client: KafkaClient = Field(
        "kafka-python",
        description="client library of the delta consumer: kafka-python, or confluent-kafka (librdkafka; "
        "replays a backlog several times faster, see README Performance)",
    )
    delta_topic: str = Field("freshet.deltas", description="topic the Flink jobs write tensor deltas to")
    feature_defs: Path = Field(Path("feature_defs"), description="feature definition YAML file or directory")
    snapshot_dir: Path = Field(Path(".freshet/snapshots"), description="where this replica's snapshots live")
    snapshot_every_s: float = Field(300.0, ge=0, description="snapshot period in seconds (0: never by time)")
    snapshot_every_deltas: int = Field(
        100_000, ge=0, description="snapshot after this many applied records (0: never by count)"
    )
    snapshot_retention: int = Field(3, ge=1, description="keep the newest K snapshots, delete older ones")
    checkpoint_dir: Path | None = Field(
        None,
        description="the delta job's retained checkpoints (its --checkpoint-dir): snapshots name the newest "
        "completed checkpoint they include; unset: they name none",
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token for /admin/*; unset means the admin endpoints are disabled"
    )
    host: str = Field("127.0.0.1", description="HTTP listen address")
    port: int = Field(8000, ge=0, le=65535, description="HTTP listen port")
    model_dir: Path | None = Field(None, description="directory of published models (freshet model publish)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest accepted request body; more is a 413")
    poll_batch_size: int = Field(
        5000, ge=1, description="most delta records decoded and applied as one batch once ready"
    )
    replay_batch_size: int = Field(
        100_000,
        ge=1,
        description="most delta records per batch while not ready (a replay; at least poll_batch_size)",
    )
    read_ahead: bool = Field(
        True,
        description="poll the next batch of deltas while the current one is applied (uses a second core)",
    )
    initial_capacity: int = Field(1024, ge=1, description="item rows allocated before the first delta")
    ready_max_lag: int = Field(
        10_000,
        ge=0,
        description="once caught up, stay ready while the total lag is at most this many records",
    )
    log_level: str = Field("INFO", description="logging level of the replica")

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from ``overrides`` (flags; ``None`` values ignored) over ``FRESHET_*`` variables.

        >>> Settings.load({"port": 9001}, environ={"FRESHET_PORT": "9000", "FRESHET_DELTA_TOPIC": "d"}).port
        9001
        >>> Settings.load({}, environ={"FRESHET_SNAPSHOT_EVERY_S": "2.5"}).snapshot_every_s
        2.5
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            env_value = environ.get(ENV_PREFIX + name.upper())
            if env_value not in (None, ""):
                values[name] = env_value
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.model_validate(values)

    def admin_enabled(self) -> bool:
        return self.admin_token is not None and bool(self.admin_token.get_secret_value())


def env_var(field: str) -> str:
    """The environment variable that sets ``field``.

    >>> env_var("snapshot_dir")
    'FRESHET_SNAPSHOT_DIR'
    """
    return ENV_PREFIX + field.upper()


__all__ = ["ENV_PREFIX", "KafkaClient", "Settings", "ValidationError", "env_var"]
