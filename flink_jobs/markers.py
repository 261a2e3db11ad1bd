"""Checkpoint markers before the delta sink: the JVM operator ``dev.freshet.flink.CheckpointMarkerOperator``.

Python functions have no hook at a checkpoint barrier, so this one operator runs in the JVM (compiled at
set-up by ``flink_jobs.javaops``). It forwards the delta rows unchanged and, in
``prepareSnapshotPreBarrier(N)``, emits one marker per partition of the delta topic into the same stream: the
sink writes them in the Kafka transaction of checkpoint N, each on the partition its key hashes to.
``freshet.markers`` describes the record and how a replica turns markers into the checkpoint it is aligned
with (DESIGN contract 6).

Markers are sound only if the operator feeds the sink's writer one to one: subtask i of the operator to
subtask i of the writer, through forward edges, with nothing else joining on the way. Then each marker is the
last record its writer subtask gets before barrier N. The job sets both parallelisms from one value
(``with_checkpoint_markers``, ``KeyedBytesSink.parallelism``) and, before it is submitted, reads Flink's
execution plan and refuses to start if the path is anything else (``check_markers_feed_sink``): a planner
that inserts a shuffle or changes a parallelism would otherwise make replicas name checkpoints their cut does
not include, silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from freshet.errors import FreshetError

if TYPE_CHECKING:
    from pyflink.datastream import DataStream
    from pyflink.table import StatementSet

OPERATOR_CLASS = "dev.freshet.flink.CheckpointMarkerOperator"
OPERATOR_NAME = "checkpoint markers"
UID = "checkpoint-markers"


class MarkerTopologyError(FreshetError):
    """The marker operator does not feed the delta sink one to one; the job would name unsound checkpoints."""


def with_checkpoint_markers(
    deltas: DataStream, delta_topic: str, bootstrap_servers: str, parallelism: int
) -> DataStream:
    """``deltas`` with a checkpoint marker per partition of ``delta_topic`` before every barrier, at
    ``parallelism`` (which must be the delta sink's)."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    operator = jvm.dev.freshet.flink.CheckpointMarkerOperator(delta_topic, bootstrap_servers)
    j_stream = deltas._j_data_stream
    marked = j_stream.transform(OPERATOR_NAME, j_stream.getType(), operator).setParallelism(parallelism)
    return DataStream(marked).uid(UID)


def check_markers_feed_sink(statements: StatementSet, sink_table: str) -> None:
    """Raise ``MarkerTopologyError`` unless the plan of ``statements`` connects the marker operator to the
    writer of ``sink_table`` one to one (asked of the planner, so it holds for the graph that will run)."""
    from pyflink.table.explain_detail import ExplainDetail

    problems = marker_path_problems(
        execution_plan(statements.explain(ExplainDetail.JSON_EXECUTION_PLAN)), sink_table
    )
    if problems:
        raise MarkerTopologyError(
            "checkpoint markers would be unsound: " + "; ".join(problems) + ". The marker operator must feed "
            f"the {sink_table} writer through forward edges at its parallelism (do not set sink.parallelism or a "
            "shuffle between them)"
        )


def execution_plan(explained: str) -> dict[str, Any]:
    """The JSON execution plan at the end of a ``JSON_EXECUTION_PLAN`` explanation.

    >>> execution_plan('== Optimized Execution Plan ==\\nx\\n== Physical Execution Plan ==\\n{"nodes": []}\\n')
    {'nodes': []}
    """
    text = explained.rsplit("== Physical Execution Plan ==", 1)[-1]
    plan: dict[str, Any] = json.loads(text[text.index("{") :])
    return plan


def marker_path_problems(plan: Mapping[str, Any], sink_table: str) -> list[str]:
    """Why the marker operator does not feed ``sink_table``'s writer one to one (empty: it does): every edge on
    the way forward, every node at the operator's parallelism, each with the one input it gets from the way."""
    nodes = {node["id"]: node for node in plan["nodes"]}
    consumers: dict[int, list[tuple[dict[str, Any], str]]] = {i: [] for i in nodes}
    for node in nodes.values():
        for edge in node.get("predecessors", []):
            consumers.setdefault(edge["id"], []).append((node, edge["ship_strategy"]))
    found = [node for node in nodes.values() if node["contents"] == OPERATOR_NAME]
    if len(found) != 1:
        return [f"{len(found)} {OPERATOR_NAME!r} operators in the plan, expected one"]
    node, problems = found[0], []
    while not _is_writer(node, sink_table):
        if len(consumers[node["id"]]) != 1:
            return [
                *problems,
                f"{node['contents']!r} feeds {len(consumers[node['id']])} operators, not one path to the sink",
            ]
        node, strategy = consumers[node["id"]][0]
        if strategy != "FORWARD":
            problems.append(f"{strategy} edge into {node['contents']!r}")
        if node["parallelism"] != found[0]["parallelism"]:
            problems.append(
                f"{node['contents']!r} at parallelism {node['parallelism']}, markers at {found[0]['parallelism']}"
            )
        if len(node.get("predecessors", [])) != 1:
            problems.append(f"{node['contents']!r} has inputs other than the markers' stream")
    return problems


def _is_writer(node: Mapping[str, Any], sink_table: str) -> bool:
    return f"{sink_table}[" in node["contents"] and "Writer" in node["contents"]
