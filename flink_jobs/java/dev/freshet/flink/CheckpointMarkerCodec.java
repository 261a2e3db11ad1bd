package dev.freshet.flink;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.utils.Utils;

/** The bytes and the Kafka key of a checkpoint marker; {@code freshet.markers} is the Python side. */
public final class CheckpointMarkerCodec {

    public static final int MARKER_BYTES = 56;
    public static final byte KIND = 5;
    private static final byte CODEC_VERSION = 1;

    private CheckpointMarkerCodec() {}

    public static byte[] encode(int partition, int partitions, long checkpointId, int subtask, int subtasks,
                                String jobIdHex) {
        byte[] job = jobIdHex.getBytes(StandardCharsets.US_ASCII);
        if (job.length != 32) {
            throw new IllegalArgumentException("job id must be 32 hex digits: " + jobIdHex);
        }
        ByteBuffer out = ByteBuffer.allocate(MARKER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
        out.put((byte) 'F').put((byte) 'D').put(CODEC_VERSION).put(KIND);
        out.putShort((short) partition).putShort((short) partitions).putLong(checkpointId);
        out.putInt(subtask).putInt(subtasks).put(job);
        return out.array();
    }

    /**
     * The first key {@code "~checkpoint-<partition>-<salt>"} that Kafka's default partitioner places on
     * {@code partition} of {@code partitions}: the marker must land on the partition it vouches for.
     */
    public static String keyFor(int partition, int partitions) {
        for (int salt = 0; ; salt++) {
            String key = "~checkpoint-" + partition + "-" + salt;
            byte[] bytes = key.getBytes(StandardCharsets.UTF_8);
            if (Utils.toPositive(Utils.murmur2(bytes)) % partitions == partition) {
                return key;
            }
        }
    }
}
