"""The delta job: raw events of the declared sources → keyed, versioned tensor deltas on Kafka, exactly once.

    freshet job run --bootstrap HOST:PORT --defs feature_defs --models DIR      # local MiniCluster + web UI
    flink run -m HOST:PORT -d -py flink_jobs/deltas_job.py ... --detach      # what `freshet job submit` runs

Per source (``feature_defs``): a Kafka source of raw bytes → parse (rejections to the dead-letter topic with
their reason) → event time and the declared watermark (bounded out-of-orderness, idleness) → by what the
source feeds:

* windowed features: keyed by item id, one ``WindowedFeatures`` operator holds the item's windows of every
  feature of the source, fires on event-time timers, and sends too-late events to the declared topic;
* eligibility: each attribute event → the item's absolute eligibility words;
* embedding: new items, batched, through the item tower of the newest compatible published model.

All deltas go to one topic, keyed by item id, through ``KeyedBytesSink`` (Kafka transactions committed on
checkpoints). ``build_pipeline`` is the whole computation and takes any byte streams, so a test can plug in
a collection source; ``submit`` wires Kafka around it.

Watermarks are generated after parsing (the event time is inside the JSON and PyFlink's ``from_source``
takes no Python timestamp assigner), so they are per source subtask over the partitions it reads, not per
partition: with parallelism 1 a partition that lags another by more than the declared out-of-orderness
makes its events late.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script by `flink run -py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flink_jobs import runtime
from flink_jobs.options import (
    JobSettings,
    PipelineSettings,
    add_job_arguments,
    job_record,
    settings_from_args,
    write_job_record,
)
from flink_jobs.sinks import KeyedBytesSink, keyed_bytes_table, keyed_bytes_type
from freshet.job_logic import windowed_sources

if TYPE_CHECKING:
    from pyflink.common import JobClient
    from pyflink.datastream import DataStream, StreamExecutionEnvironment
    from pyflink.table import StatementSet, StreamTableEnvironment

    from freshet.spec import FeatureSet


@dataclass(frozen=True)
class Outputs:
    """The job's output streams, each of ``Row(key: str, payload: bytes)``."""

    deltas: DataStream
    dlq: DataStream
    #: too-late events by declared topic (features with ``late.policy: side_output``)
    late: dict[str, DataStream]


# ------------------------------------------------------------------ the computation


def build_pipeline(
    env: StreamExecutionEnvironment,
    sources: Mapping[str, DataStream],
    feature_set: FeatureSet,
    settings: PipelineSettings,
) -> Outputs:
    """Deltas, dead letters and too-late events from ``sources`` (raw bytes by declared source name)."""
    from pyflink.datastream import OutputTag

    from flink_jobs.functions import ParseEvents

    deltas: list[DataStream] = []
    dlq: list[DataStream] = []
    late: dict[str, list[DataStream]] = {}
    for name, raw in sources.items():
        jvm = name in windowed_sources(feature_set) and settings.window_operator == "jvm"
        if jvm:  # the engagement path in the JVM: its own parse, per-partition watermarks from the source
            out, late_by_topic, refused = _windowed_jvm(raw, feature_set, name)
            deltas.append(out)
            dlq.append(refused)
            for topic, stream in late_by_topic.items():
                late.setdefault(topic, []).append(stream)
        if jvm and not _feeds_python(feature_set, name):
            continue
        tag = OutputTag(f"dlq-{name}", keyed_bytes_type())  # a fresh type per tag (ENVIRONMENT.md)
        parsed = raw.process(ParseEvents(feature_set, name, tag)).name(f"parse {name}").uid(f"parse-{name}")
        if not jvm:  # else the JVM parser already sent this source's bad records
            dlq.append(parsed.get_side_output(tag))
        events = _with_event_time(parsed, feature_set, name)
        if name in windowed_sources(feature_set) and not jvm:
            out, late_by_topic = _windowed(events, feature_set, name)
            deltas.append(out)
            for topic, stream in late_by_topic.items():
                late.setdefault(topic, []).append(stream)
        if feature_set.eligibility is not None and feature_set.eligibility.source == name:
            deltas.append(_eligibility(events, feature_set, name))
        if feature_set.embedding.source == name:
            deltas.append(_embeddings(events, feature_set, name, settings))
    if not deltas:
        raise ValueError(
            f"none of the sources {sorted(sources)} feeds a feature, eligibility or the embedding"
        )
    return Outputs(_union(deltas), _union(dlq), {topic: _union(streams) for topic, streams in late.items()})


def _with_event_time(parsed: DataStream, feature_set: FeatureSet, name: str) -> DataStream:
    from pyflink.common import Duration, WatermarkStrategy

    from flink_jobs.functions import EventTime

    watermark = feature_set.source(name).watermark
    strategy = (
        WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(watermark.max_out_of_orderness_ms))
        .with_idleness(Duration.of_millis(watermark.idle_timeout_ms))
        .with_timestamp_assigner(EventTime())
    )
    return (
        parsed.assign_timestamps_and_watermarks(strategy).name(f"event time {name}").uid(f"event-time-{name}")
    )


def _windowed(
    events: DataStream, feature_set: FeatureSet, name: str
) -> tuple[DataStream, dict[str, DataStream]]:
    from pyflink.common import Types
    from pyflink.datastream import OutputTag

    from flink_jobs.functions import WindowedFeatures, item_id_of

    topics = sorted({f.late.topic for f in feature_set.features if f.source == name and f.late.topic})
    tags = {topic: OutputTag(f"late-{name}-{i}", keyed_bytes_type()) for i, topic in enumerate(topics)}
    out = (
        events.key_by(item_id_of, key_type=Types.LONG())
        .process(WindowedFeatures(feature_set, name, tags), output_type=keyed_bytes_type())
        .name(f"windows {name}")
        .uid(f"windows-{name}")
    )
    return out, {topic: out.get_side_output(tag) for topic, tag in tags.items()}


def _feeds_python(feature_set: FeatureSet, name: str) -> bool:
    """Whether source ``name`` also feeds eligibility or the embedding (Python operators)."""
    eligibility = feature_set.eligibility is not None and feature_set.eligibility.source == name
    return eligibility or feature_set.embedding.source == name


def jvm_watermarks(feature_set: FeatureSet, name: str) -> Any:
    """The declared watermark of a JVM-windowed source, event time read in the JVM: for its Kafka source, where
    it makes watermarks per partition (split), idle partitions excluded after the declared idle timeout."""
    from pyflink.common import WatermarkStrategy
    from pyflink.java_gateway import get_gateway

    from freshet.engagement_config import engagement_config_json

    config = engagement_config_json(feature_set, name)
    return WatermarkStrategy(get_gateway().jvm.dev.freshet.flink.EngagementJob.watermarks(config))


def _windowed_jvm(
    raw: DataStream, feature_set: FeatureSet, name: str
) -> tuple[DataStream, dict[str, DataStream], DataStream]:
    """Deltas, too-late events by topic, and dead letters of ``raw`` (which must carry event-time watermarks:
    ``jvm_watermarks``), computed by ``dev.freshet.flink.EngagementJob``; only bad records come back to Python."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    from flink_jobs.functions import DeadLetters
    from freshet.engagement_config import engagement_config_json

    built = get_gateway().jvm.dev.freshet.flink.EngagementJob.build(
        raw._j_data_stream, engagement_config_json(feature_set, name)
    )
    late = {str(topic): DataStream(built.late(topic)) for topic in built.lateTopics()}
    dlq = (
        DataStream(built.refused())
        .map(DeadLetters(feature_set, name), output_type=keyed_bytes_type())
        .name(f"dead letters {name}")
        .uid(f"dead-letters-{name}")
    )
    return DataStream(built.deltas()), late, dlq


def _eligibility(events: DataStream, feature_set: FeatureSet, name: str) -> DataStream:
    from flink_jobs.functions import EligibilityDeltas

    return (
        events.map(EligibilityDeltas(feature_set), output_type=keyed_bytes_type())
        .name(f"eligibility {name}")
        .uid(f"eligibility-{name}")
    )


def _embeddings(
    events: DataStream, feature_set: FeatureSet, name: str, settings: PipelineSettings
) -> DataStream:
    from pyflink.common import Types

    from flink_jobs.functions import EmbedItems, ItemShard

    embed = EmbedItems(
        feature_set,
        settings.models_dir,
        settings.embed_batch_size,
        settings.embed_linger_ms,
        settings.model_poll_ms,
    )
    return (
        events.key_by(ItemShard(settings.embed_shards), key_type=Types.INT())
        .process(embed, output_type=keyed_bytes_type())
        .name(f"embed {name}")
        .uid(f"embed-{name}")
    )


def _union(streams: Sequence[DataStream]) -> DataStream:
    first, *rest = streams
    return first.union(*rest) if rest else first


# ------------------------------------------------------------------ Kafka around it


def kafka_source(
    env: StreamExecutionEnvironment, settings: JobSettings, topic: str, name: str, watermarks: Any = None
) -> DataStream:
    """Raw record values of ``topic``: from the job's committed offsets, else the earliest; committed on checkpoints;
    with the job's ``source_properties``. With ``watermarks`` (a ``WatermarkStrategy``) the source makes them, per partition; else none."""
    from pyflink.common import Types, WatermarkStrategy
    from pyflink.common.serialization import ByteArraySchema
    from pyflink.datastream.connectors.kafka import (
        KafkaSource,
    )

    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.bootstrap)
        .set_topics(topic)
        .set_group_id(settings.group_id or settings.job_name)
        .set_starting_offsets(_committed_else_earliest())
        .set_value_only_deserializer(ByteArraySchema())
        .set_property("commit.offsets.on.checkpoint", "true")
    )
    for key, value in settings.source_properties.items():
        builder = builder.set_property(key, value)
    source = builder.build()
    strategy = WatermarkStrategy.no_watermarks() if watermarks is None else watermarks
    stream = env.from_source(source, strategy, f"kafka {topic}", Types.PRIMITIVE_ARRAY(Types.BYTE()))
    return stream.uid(f"source-{name}")


def _committed_else_earliest() -> Any:
    """``OffsetsInitializer.committedOffsets(EARLIEST)``, built in the JVM: PyFlink's own wrapper names the
    shaded ``OffsetResetStrategy`` of the fat connector jar, which the plain connector jar here does not have."""
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    earliest = jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy.EARLIEST
    initializer = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer
    return KafkaOffsetsInitializer(initializer.committedOffsets(earliest))


def register_sinks(t_env: StreamTableEnvironment, outputs: Outputs, settings: JobSettings) -> StatementSet:
    """One exactly-once Kafka sink per output topic (each with its own transactional id prefix), in one job.

    The sinks carry no explicit uid: a Table API ``INSERT`` takes none. The planner can stamp uids itself
    (``table.exec.uid.generation = ALWAYS``), but only from a per-process counter of plan nodes (``<id>_<type>``),
    which any change to the job graph shifts, and which would orphan the transactions of existing checkpoints;
    Flink's own hash of the unchanged topology is as stable. A DataStream ``KafkaSink`` with a JVM record
    serializer would take ``.uid()``; that is the way if sink uids must be pinned.
    """
    from flink_jobs.markers import check_markers_feed_sink, with_checkpoint_markers

    statements = t_env.create_statement_set()
    # One parallelism for the marker operator and the delta sink's writer: markers are sound only one to one.
    parallelism = settings.flink.parallelism
    deltas = with_checkpoint_markers(outputs.deltas, settings.delta_topic, settings.bootstrap, parallelism)
    targets = [
        ("deltas", settings.delta_topic, deltas, parallelism),
        ("dlq", settings.dlq_topic, outputs.dlq, None),
    ]
    targets += [
        (f"late{i}", settings.topic(t), s, None) for i, (t, s) in enumerate(sorted(outputs.late.items()))
    ]
    for suffix, topic, stream, sink_parallelism in targets:
        sink = KeyedBytesSink(
            topic,
            settings.bootstrap,
            f"{settings.transactional_id_prefix}-{suffix}",
            transaction_timeout_ms=settings.transaction_timeout_ms,
            checkpoint_interval_ms=settings.flink.checkpoint_interval_ms,
            parallelism=sink_parallelism,
        )
        statements.add_insert(sink.register(t_env, f"{suffix}_sink"), keyed_bytes_table(t_env, stream))
    check_markers_feed_sink(statements, "deltas_sink")
    return statements


def submit(settings: JobSettings) -> JobClient:
    """Build the job on Kafka and submit it (to the local MiniCluster, or the cluster of `flink run`)."""
    from freshet.spec import load_feature_set

    feature_set = load_feature_set(settings.defs)
    defaults = {
        "pipeline.name": settings.job_name,
        # Items whose window states the Python worker keeps decoded (default 1000): a miss is a blocking
        # round trip to the JVM per event. 20000 measured ~35% more events/s with 5000 active items.
        "python.state.cache-size": "20000",
        # Chained operators pass records on without copying them (Flink copies by default, in case an operator
        # keeps or changes its input after the call; none of this job's does, and keyed state is kept apart).
        # Over 5,000 items each event makes ~3.4 deltas, each copied at every hop of the sink chain: this
        # measured 22 job CPU seconds instead of 30-36 for bench.job's 200k events.
        "pipeline.object-reuse": "true",
    }
    flink = replace(settings.flink, extra={**defaults, **settings.flink.extra})
    env, t_env = runtime.table_environment(flink)
    used = [*windowed_sources(feature_set), feature_set.embedding.source]
    if feature_set.eligibility is not None:
        used.append(feature_set.eligibility.source)
    jvm = settings.pipeline.window_operator == "jvm"
    sources = {name: kafka_source(env, settings, settings.topic(feature_set.source(name).topic), name,
                                  jvm_watermarks(feature_set, name) if jvm and name in windowed_sources(feature_set) else None)
               for name in dict.fromkeys(used)}  # fmt: skip
    outputs = build_pipeline(env, sources, feature_set, settings.pipeline)
    client = register_sinks(t_env, outputs, settings).execute().get_job_client()
    assert client is not None
    return client


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job in this process: ``--detach`` returns once submitted (for `flink run -d`)."""
    from flink_jobs.driver import run_attached

    parser = argparse.ArgumentParser(
        prog="deltas_job", description=__doc__.splitlines()[0] if __doc__ else None
    )
    add_job_arguments(parser)
    parser.add_argument("--restore-from", help="a retained checkpoint or savepoint to resume from")
    parser.add_argument("--detach", action="store_true", help="submit and exit without waiting for the job")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    settings = settings_from_args(args, args.restore_from)
    if args.detach:
        client = submit(settings)
        job_id = str(client.get_job_id())
        _try_write_job_record(settings, job_record(settings, job_id))
        print(
            json.dumps({"job_id": job_id, "transactional_id_prefix": settings.transactional_id_prefix}),
            flush=True,
        )
        return 0
    return run_attached(settings)


def _try_write_job_record(settings: JobSettings, record: Mapping[str, Any]) -> None:
    try:
        write_job_record(settings, record)
    except OSError as exc:  # a cluster's checkpoint directory may not be writable from the client
        print(f"note: could not record the job beside its checkpoints ({exc})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
