package dev.freshet.flink;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.json.JsonWriteFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.json.JsonMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;

/**
 * The windowed features of one source over one item: {@code freshet.job_logic.EngagementLogic}. A firing becomes
 * a FEATURE delta in the codec of {@code freshet.deltas} (version {@code window_end << 20 | firing}); the firings of
 * one step that share a version (features whose windows end together) become one FEATURES record instead, as
 * {@code freshet.job_logic.encode_firings} groups them; a too-late event becomes a side-output record (policy
 * side_output, with a topic) or a count.
 */
final class EngagementLogic {
    static final int SEQ_BITS = 20;
    static final long MAX_SEQ = (1L << SEQ_BITS) - 1;
    static final long MAX_TIME_MS = (1L << (63 - SEQ_BITS)) - 1;
    static final int HEADER_BYTES = 48;
    static final byte KIND_FEATURE = 2;
    static final byte KIND_FEATURES = 6;
    static final int REGION_FIRST_FEATURE = 2;
    private static final ObjectMapper LATE_JSON = JsonMapper.builder().enable(JsonWriteFeature.ESCAPE_NON_ASCII).build();

    /**
     * One item's open windows, by feature (null: none open), and the event-time timer last registered for them.
     * Flink state, written by {@link ItemWindowsSerializer}.
     */
    public static final class ItemWindows {
        public WindowLogic.State[] byFeature;
        /** The due time of the item's pending timer (Long.MIN_VALUE: none known). */
        public long timerMs = Long.MIN_VALUE;

        public ItemWindows() {}

        ItemWindows(int features) {
            byFeature = new WindowLogic.State[features];
        }

        /** A deep copy: what the heap state backend keeps for a checkpoint while this one changes. */
        ItemWindows copy() {
            ItemWindows c = new ItemWindows(byFeature.length);
            for (int i = 0; i < byFeature.length; i++) {
                if (byFeature[i] != null) {
                    c.byFeature[i] = byFeature[i].copy();
                }
            }
            c.timerMs = timerMs;
            return c;
        }

        boolean isEmpty() {
            for (WindowLogic.State w : byFeature) {
                if (w != null && !w.isEmpty()) { return false; }
            }
            return true;
        }
    }

    /** What one event or watermark did: deltas, side-output records, counts by feature index. */
    static final class Step {
        final List<byte[]> deltas = new ArrayList<>();
        final List<String> lateTopics = new ArrayList<>();
        final List<byte[]> lateRecords = new ArrayList<>();
        final List<Integer> lateFeatures = new ArrayList<>();
        final int[] dropped;
        final int[] unencodable;

        Step(int features) {
            dropped = new int[features];
            unencodable = new int[features];
        }
    }

    final EngagementSpec spec;

    EngagementLogic(EngagementSpec spec) {
        this.spec = spec.ready();
        if (spec.features.size() > 64) {
            throw new IllegalArgumentException("at most 64 windowed features per source, got " + spec.features.size());
        }
    }

    ItemWindows initial() {
        return new ItemWindows(spec.features.size());
    }

    /** {@code event} arrives while the watermark is {@code watermarkMs}. */
    Step onEvent(ItemWindows windows, EngagementEvent event, long watermarkMs) {
        return step(windows, event.itemId, event, watermarkMs);
    }

    /** The watermark advanced: fire and clear what it passed for {@code itemId}. */
    Step onWatermark(ItemWindows windows, long itemId, long watermarkMs) {
        return step(windows, itemId, null, watermarkMs);
    }

    /** The least watermark at which this item's windows need attention (Long.MAX_VALUE: none). */
    long nextDueMs(ItemWindows windows) {
        long due = Long.MAX_VALUE;
        for (int i = 0; i < windows.byFeature.length; i++) {
            if (windows.byFeature[i] != null) {
                due = Math.min(due, spec.features.get(i).window.nextDueMs(windows.byFeature[i]));
            }
        }
        return due;
    }

    private Step step(ItemWindows windows, long itemId, EngagementEvent event, long watermarkMs) {
        Step step = new Step(spec.features.size());
        Firings firings = new Firings();
        for (int i = 0; i < spec.features.size(); i++) {
            EngagementSpec.Feature feature = spec.features.get(i);
            WindowLogic.State state = windows.byFeature[i];
            boolean takes = event != null && event.takes(i);
            if (state == null && !takes) {
                continue; // no window open, none to open: a watermark has nothing to do
            }
            if (state == null) {
                state = feature.window.initial();
            }
            List<WindowLogic.Output> outputs = takes
                ? feature.window.onEvent(state, event.tsMs, event.numbers[i], event.hashes[i], watermarkMs)
                : feature.window.onWatermark(state, watermarkMs);
            windows.byFeature[i] = state.isEmpty() ? null : state;
            for (WindowLogic.Output output : outputs) {
                emit(step, firings, i, feature, itemId, event, output);
            }
        }
        encode(step, firings, itemId);
        return step;
    }

    private void emit(Step step, Firings firings, int i, EngagementSpec.Feature feature, long itemId,
                      EngagementEvent event, WindowLogic.Output output) {
        if (output.kind == WindowLogic.Output.FIRE) {
            float value = (float) output.value;
            if (!Float.isFinite(value)) {
                step.unencodable[i]++;
            } else {
                firings.add(feature.region, versionOf(output), output.eventTsMs, value);
            }
        } else if (output.kind == WindowLogic.Output.LATE && feature.lateTopic != null) {
            step.lateTopics.add(feature.lateTopic);
            step.lateRecords.add(lateRecord(feature.name, itemId, event, output));
            step.lateFeatures.add(i);
        } else {
            step.dropped[i]++;
        }
    }

    private static long versionOf(WindowLogic.Output fire) {
        if (fire.endMs < 0 || fire.endMs > MAX_TIME_MS || fire.firing > MAX_SEQ) {
            throw new IllegalStateException("no version for window end " + fire.endMs + ", firing " + fire.firing);
        }
        return fire.endMs << SEQ_BITS | fire.firing;
    }

    /**
     * The encodable firings of one step, in order: region, version, event time and float32 value of each. Most
     * steps fire nothing: the arrays are made at the first firing, not at every event.
     */
    static final class Firings {
        private static final int[] NO_INTS = {};
        private static final long[] NO_LONGS = {};
        private static final float[] NO_FLOATS = {};

        int size;
        int[] regions = NO_INTS;
        long[] versions = NO_LONGS;
        long[] eventTsMs = NO_LONGS;
        float[] values = NO_FLOATS;

        void add(int region, long version, long tsMs, float value) {
            if (size == regions.length) {
                int capacity = Math.max(8, 2 * size);
                regions = java.util.Arrays.copyOf(regions, capacity);
                versions = java.util.Arrays.copyOf(versions, capacity);
                eventTsMs = java.util.Arrays.copyOf(eventTsMs, capacity);
                values = java.util.Arrays.copyOf(values, capacity);
            }
            regions[size] = region;
            versions[size] = version;
            eventTsMs[size] = tsMs;
            values[size] = value;
            size++;
        }
    }

    /**
     * {@code encode_firings}: one record per version, in the order each version first fired; a version only one
     * feature fired is a FEATURE delta, one that several fired a FEATURES record with all of their values.
     */
    private void encode(Step step, Firings firings, long itemId) {
        if (firings.size == 0) {
            return;
        }
        if (spec.featureColumns > 64) { // the layout has no FEATURES records: one record per firing
            for (int i = 0; i < firings.size; i++) {
                step.deltas.add(featureDelta(firings.regions[i], itemId, firings.versions[i], firings.eventTsMs[i],
                    firings.values[i]));
            }
            return;
        }
        boolean[] taken = new boolean[firings.size];
        for (int i = 0; i < firings.size; i++) {
            if (taken[i]) {
                continue;
            }
            long mask = 0;
            float[] row = null;
            int members = 0;
            for (int j = i; j < firings.size; j++) {
                if (firings.versions[j] != firings.versions[i]) {
                    continue;
                }
                taken[j] = true;
                members++;
                if (row == null) {
                    row = new float[spec.featureColumns];
                }
                int column = firings.regions[j] - REGION_FIRST_FEATURE;
                mask |= 1L << column;
                row[column] = firings.values[j];
            }
            step.deltas.add(members == 1
                ? featureDelta(firings.regions[i], itemId, firings.versions[i], firings.eventTsMs[i], firings.values[i])
                : featuresRecord(itemId, firings.versions[i], firings.eventTsMs[i], mask, row));
        }
    }

    /** A FEATURE delta, byte for byte {@code encode_delta}. */
    byte[] featureDelta(int region, long itemId, long version, long eventTsMs, float value) {
        ByteBuffer out = header(HEADER_BYTES + 4, KIND_FEATURE, region, itemId, version, eventTsMs);
        out.putFloat(value);
        return out.array();
    }

    /** A FEATURES record, byte for byte {@code encode_features}: a column mask, then a value per feature column. */
    byte[] featuresRecord(long itemId, long version, long eventTsMs, long mask, float[] row) {
        ByteBuffer out = header(HEADER_BYTES + 8 + 4 * row.length, KIND_FEATURES, REGION_FIRST_FEATURE, itemId,
            version, eventTsMs);
        out.putLong(mask);
        for (float value : row) {
            out.putFloat(value);
        }
        return out.array();
    }

    private ByteBuffer header(int bytes, byte kind, int region, long itemId, long version, long eventTsMs) {
        ByteBuffer out = ByteBuffer.allocate(bytes).order(ByteOrder.LITTLE_ENDIAN);
        out.put((byte) 'F').put((byte) 'D').put((byte) 1).put(kind);
        out.putShort((short) region).putShort((short) 0).put(spec.layoutHash);
        out.putLong(itemId).putLong(version).putLong(eventTsMs).putLong(0L);
        return out;
    }

    /** {@code late_record}: the feature, why, and the event as parsed (the raw bytes, read again). */
    byte[] lateRecord(String feature, long itemId, EngagementEvent event, WindowLogic.Output late) {
        try {
            ObjectNode record = LATE_JSON.createObjectNode();
            record.put("feature", feature).put("source", spec.source).put("item_id", itemId)
                .put("event_ts_ms", late.eventTsMs).put("watermark_ms", late.watermarkMs).put("reason", late.reason);
            record.set("event", EventCheck.JSON.readTree(event.raw));
            return LATE_JSON.writeValueAsBytes(record);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
