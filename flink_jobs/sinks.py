"""Kafka sinks for freshet jobs: keyed records whose value is raw bytes, written exactly once.

Deltas are keyed by item id (ASCII decimal) and their value is a binary codec's output. The Table API Kafka
connector writes both unchanged with the ``raw`` format (``STRING`` key as UTF-8, ``BYTES`` value as is), puts
the key in the record key (``key.fields``), partitions by Kafka's default (murmur2 of the key: the same item
always lands on the same partition), and with ``sink.delivery-guarantee = exactly-once`` writes inside Kafka
transactions that commit when a Flink checkpoint completes. A DataStream job ends in such a sink like this::

    sink = KeyedBytesSink(topic="deltas", bootstrap_servers=servers,
                          transactional_id_prefix=unique_transactional_id_prefix("deltas"))
    stream = stream.map(lambda d: keyed_bytes_row(str(d.item_id), encode(d)), output_type=keyed_bytes_type())
    sink.register(t_env, "delta_sink")
    keyed_bytes_table(t_env, stream).execute_insert("delta_sink")
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyflink.common import Row
    from pyflink.common.typeinfo import TypeInformation
    from pyflink.datastream import DataStream
    from pyflink.table import StreamTableEnvironment, Table

# Apache Kafka's default transaction.max.timeout.ms: a producer asking for more is refused by the broker.
KAFKA_MAX_TRANSACTION_TIMEOUT_MS = 900_000
KEY_COLUMN, VALUE_COLUMN = "item_id", "payload"


@dataclass(frozen=True)
class KeyedBytesSink:
    """A Kafka topic written with a ``STRING`` key column and a ``BYTES`` value column, exactly once.

    ``transactional_id_prefix`` must differ between jobs writing to the same cluster (two jobs with one prefix
    fence each other). ``transaction_timeout_ms`` must exceed the checkpoint interval plus the longest expected
    restart (or a recovered transaction can no longer be committed) and not exceed the broker's maximum.
    """

    topic: str
    bootstrap_servers: str
    transactional_id_prefix: str
    transaction_timeout_ms: int = 600_000
    checkpoint_interval_ms: int | None = None
    #: the writer's parallelism (``sink.parallelism``); ``None``: the planner's choice (its input's)
    parallelism: int | None = None
    key_column: str = KEY_COLUMN
    value_column: str = VALUE_COLUMN
    properties: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.transaction_timeout_ms <= KAFKA_MAX_TRANSACTION_TIMEOUT_MS:
            raise ValueError(
                f"transaction_timeout_ms={self.transaction_timeout_ms} must be in "
                f"(0, {KAFKA_MAX_TRANSACTION_TIMEOUT_MS}] (the broker's transaction.max.timeout.ms)"
            )
        if (
            self.checkpoint_interval_ms is not None
            and self.transaction_timeout_ms <= self.checkpoint_interval_ms
        ):
            raise ValueError(
                f"transaction_timeout_ms={self.transaction_timeout_ms} must exceed the checkpoint interval "
                f"({self.checkpoint_interval_ms} ms): transactions stay open from one checkpoint to the next"
            )

    def options(self) -> dict[str, str]:
        """The connector options of the sink table."""
        options = {
            "connector": "kafka",
            "topic": self.topic,
            "properties.bootstrap.servers": self.bootstrap_servers,
            "key.format": "raw",
            "key.fields": self.key_column,
            "value.format": "raw",
            "value.fields-include": "EXCEPT_KEY",
            "sink.partitioner": "default",
            "sink.delivery-guarantee": "exactly-once",
            "sink.transactional-id-prefix": self.transactional_id_prefix,
            "properties.transaction.timeout.ms": str(self.transaction_timeout_ms),
        }
        if self.parallelism is not None:
            options["sink.parallelism"] = str(self.parallelism)
        options.update({f"properties.{k}": v for k, v in self.properties.items()})
        return options

    def ddl(self, table_name: str) -> str:
        """``CREATE TEMPORARY TABLE`` for this sink.

        >>> print(KeyedBytesSink("deltas", "b:9092", "p").ddl("out").splitlines()[0:3])
        ['CREATE TEMPORARY TABLE `out` (', '  `item_id` STRING NOT NULL,', '  `payload` BYTES']
        """
        columns = f"  {_ident(self.key_column)} STRING NOT NULL,\n  {_ident(self.value_column)} BYTES"
        options = ",\n".join(f"  {_literal(k)} = {_literal(v)}" for k, v in self.options().items())
        return f"CREATE TEMPORARY TABLE {_ident(table_name)} (\n{columns}\n) WITH (\n{options}\n)"

    def register(self, t_env: StreamTableEnvironment, table_name: str) -> str:
        """Create the sink table in ``t_env``; returns ``table_name`` for ``execute_insert``."""
        t_env.execute_sql(self.ddl(table_name))
        return table_name


def keyed_bytes_type(key_column: str = KEY_COLUMN, value_column: str = VALUE_COLUMN) -> TypeInformation:
    """The row type a Python operator must declare to feed ``KeyedBytesSink``: ``(str, bytes)``."""
    from pyflink.common import Types

    return Types.ROW_NAMED([key_column, value_column], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())])


def keyed_bytes_row(item_id: str, payload: bytes) -> Row:
    """One record for ``KeyedBytesSink`` (a ``Row``: PyFlink encodes tuples of a row type as errors)."""
    from pyflink.common import Row

    return Row(item_id, payload)


def keyed_bytes_table(t_env: StreamTableEnvironment, stream: DataStream) -> Table:
    """View a stream of ``keyed_bytes_type()`` rows as a table (``STRING``, ``BYTES``) for the sink."""
    return t_env.from_data_stream(stream)


def unique_transactional_id_prefix(job_name: str) -> str:
    """``job_name`` plus a random suffix: a fresh prefix for a job run that restores nothing.

    >>> unique_transactional_id_prefix("smoke").startswith("smoke-")
    True
    """
    return f"{job_name}-{uuid.uuid4().hex[:12]}"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
