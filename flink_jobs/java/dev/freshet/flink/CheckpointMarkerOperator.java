package dev.freshet.flink;

import java.util.List;
import java.util.Properties;
import org.apache.flink.api.common.TaskInfo;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Forwards the delta rows {@code (key, payload)} unchanged and, just before each checkpoint barrier passes,
 * emits one checkpoint marker per partition of the delta topic (DESIGN contract 6).
 *
 * <p>Chained right before the exactly-once Kafka sink, at its parallelism, a marker is the last record this
 * subtask hands the sink before barrier N, so it travels in the sink's transaction of checkpoint N, on the
 * partition its key hashes to (Kafka's default partitioner: murmur2 of the UTF-8 key). A reader that has read
 * checkpoint N's marker from every subtask on every partition has read every delta emitted before barrier N.
 *
 * <p>Record value (little-endian, {@link CheckpointMarkerCodec#MARKER_BYTES} bytes), read by
 * {@code freshet.markers}: magic "FD", codec 1, kind 5, partition u16, partition count u16, checkpoint id i64,
 * subtask u32, subtask count u32, job id as 32 ASCII hex digits.
 */
public final class CheckpointMarkerOperator extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row> {

    private final String topic;
    private final String bootstrapServers;
    private transient KafkaConsumer<byte[], byte[]> metadata;

    public CheckpointMarkerOperator(String topic, String bootstrapServers) {
        this.topic = topic;
        this.bootstrapServers = bootstrapServers;
    }

    @Override
    public void open() throws Exception {
        super.open();
        Properties props = new Properties();
        props.setProperty("bootstrap.servers", bootstrapServers);
        props.setProperty("client.id", "freshet-checkpoint-markers");
        // metadata only: partitionsFor() is answered from the client's cache, refreshed in the background
        metadata = new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer());
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        output.collect(element);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        super.prepareSnapshotPreBarrier(checkpointId);
        TaskInfo task = getRuntimeContext().getTaskInfo();
        String jobId = getRuntimeContext().getJobInfo().getJobId().toHexString();
        int partitions = partitionCount();
        for (int p = 0; p < partitions; p++) {
            byte[] value = CheckpointMarkerCodec.encode(p, partitions, checkpointId,
                    task.getIndexOfThisSubtask(), task.getNumberOfParallelSubtasks(), jobId);
            output.collect(new StreamRecord<>(Row.of(CheckpointMarkerCodec.keyFor(p, partitions), value)));
        }
    }

    /** Partitions of the delta topic now (asked at every checkpoint, so a topic that grows is covered). */
    private int partitionCount() {
        List<PartitionInfo> found = metadata.partitionsFor(topic);
        if (found == null || found.isEmpty()) {
            throw new IllegalStateException("delta topic " + topic + " has no partitions");
        }
        return found.size();
    }

    @Override
    public void close() throws Exception {
        try {
            if (metadata != null) {
                metadata.close();
            }
        } finally {
            super.close();
        }
    }
}
