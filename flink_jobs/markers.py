"""Checkpoint markers before the delta sink: the JVM operator ``dev.freshet.flink.CheckpointMarkerOperator``.

Python functions have no hook at a checkpoint barrier, so this one operator runs in the JVM (compiled at
set-up by ``flink_jobs.javaops``). It forwards the delta rows unchanged and, in
``prepareSnapshotPreBarrier(N)``, emits one marker per partition of the delta topic into the same stream: the
sink writes them in the Kafka transaction of checkpoint N, each on the partition its key hashes to.
``freshet.markers`` describes the record and how a replica turns markers into the checkpoint it is aligned
with (DESIGN contract 6).

It must feed the sink directly, at the sink's parallelism (the default: the Table planner connects the
converted stream to the sink writer by forward edges), so that each marker is the last record its sink subtask
writes before the barrier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyflink.datastream import DataStream

OPERATOR_CLASS = "dev.freshet.flink.CheckpointMarkerOperator"
UID = "checkpoint-markers"


def with_checkpoint_markers(deltas: DataStream, delta_topic: str, bootstrap_servers: str) -> DataStream:
    """``deltas`` with a checkpoint marker per partition of ``delta_topic`` before every barrier."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    operator = jvm.dev.freshet.flink.CheckpointMarkerOperator(delta_topic, bootstrap_servers)
    j_stream = deltas._j_data_stream
    marked = j_stream.transform("checkpoint markers", j_stream.getType(), operator)
    return DataStream(marked).uid(UID)
