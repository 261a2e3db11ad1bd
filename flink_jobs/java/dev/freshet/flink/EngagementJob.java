package dev.freshet.flink;

import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.SingleOutputStreamOperator;
import org.apache.flink.types.Row;
import org.apache.flink.util.OutputTag;

/**
 * The engagement path of the delta job in the JVM, called from {@code flink_jobs.deltas_job} through the gateway:
 * raw records (with event-time timestamps and watermarks from the Kafka source, per partition) → check and read
 * them ({@link ParseEngagement}) → keyed by item id → every windowed feature of the source ({@link
 * EngagementWindows}) → FEATURE deltas as {@code Row(item_id: STRING, payload: BYTES)}, the rows the Kafka sinks
 * take. Refused records leave as {@code Row(reason, raw)} for the Python dead-letter writer.
 */
public final class EngagementJob {
    /** {@code flink_jobs.sinks.keyed_bytes_type()}: what the Kafka sinks and the Python operators exchange. */
    public static final TypeInformation<Row> KEYED_BYTES =
        Types.ROW_NAMED(new String[] {"item_id", "payload"}, Types.STRING, Types.PRIMITIVE_ARRAY(Types.BYTE));

    private EngagementJob() {}

    /** The source's declared watermark, with the event time read from the raw record (refused records: none). */
    public static WatermarkStrategy<byte[]> watermarks(String configJson) {
        EngagementSpec spec = new EngagementSpec(configJson);
        WatermarkStrategy<byte[]> strategy =
            WatermarkStrategy.<byte[]>forBoundedOutOfOrderness(Duration.ofMillis(spec.maxOutOfOrdernessMs));
        if (spec.idleTimeoutMs != null) {
            strategy = strategy.withIdleness(Duration.ofMillis(spec.idleTimeoutMs));
        }
        return strategy.withTimestampAssigner(new EventTime(spec));
    }

    /** The operators on {@code raw}; {@link Built} hands their output streams back. */
    public static Built build(DataStream<byte[]> raw, String configJson) {
        EngagementSpec spec = new EngagementSpec(configJson);
        OutputTag<Row> refused = new OutputTag<>("refused-" + spec.source, KEYED_BYTES);
        SingleOutputStreamOperator<EngagementEvent> events = raw
            .process(new ParseEngagement(spec, refused), TypeInformation.of(EngagementEvent.class))
            .name("parse " + spec.source).uid("parse-" + spec.source + "-jvm");
        Map<String, OutputTag<Row>> lateTags = new LinkedHashMap<>();
        List<String> topics = spec.lateTopics();
        for (int i = 0; i < topics.size(); i++) {
            lateTags.put(topics.get(i), new OutputTag<>("late-" + spec.source + "-" + i, KEYED_BYTES));
        }
        SingleOutputStreamOperator<Row> deltas = events
            .keyBy(new ItemId(), Types.LONG)
            .process(new EngagementWindows(spec, lateTags), KEYED_BYTES)
            .name("windows " + spec.source).uid("windows-" + spec.source + "-jvm");
        return new Built(deltas, events.getSideOutput(refused), lateTags);
    }

    /** The streams of {@link #build}: deltas, refused records, too-late events by declared topic. */
    public static final class Built {
        private final SingleOutputStreamOperator<Row> deltas;
        private final DataStream<Row> refused;
        private final Map<String, OutputTag<Row>> lateTags;

        Built(SingleOutputStreamOperator<Row> deltas, DataStream<Row> refused, Map<String, OutputTag<Row>> lateTags) {
            this.deltas = deltas;
            this.refused = refused;
            this.lateTags = lateTags;
        }

        public DataStream<Row> deltas() { return deltas; }

        public DataStream<Row> refused() { return refused; }

        public List<String> lateTopics() { return List.copyOf(lateTags.keySet()); }

        public DataStream<Row> late(String topic) { return deltas.getSideOutput(lateTags.get(topic)); }
    }

    /** The key of the windows: the item id. */
    static final class ItemId implements KeySelector<EngagementEvent, Long> {
        @Override
        public Long getKey(EngagementEvent event) {
            return event.itemId;
        }
    }

    /** Event time from the record itself, as the parser reads it; a record it refuses moves no watermark. */
    static final class EventTime implements SerializableTimestampAssigner<byte[]> {
        private final EngagementSpec spec;

        EventTime(EngagementSpec spec) {
            this.spec = spec;
        }

        @Override
        public long extractTimestamp(byte[] raw, long recordTimestamp) {
            EventCheck.Parsed parsed = spec.ready().check.parse(raw);
            return parsed.ok() ? parsed.tsMs : Long.MIN_VALUE;
        }
    }
}
