package dev.freshet.flink;

import java.io.IOException;
import java.util.TreeMap;

import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.base.TypeSerializerSingleton;
import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputSerializer;
import org.apache.flink.core.memory.DataOutputView;

/**
 * The Flink serializer of one item's windows ({@link EngagementLogic.ItemWindows}): the pending timer's time, a count
 * of features, then per feature its number of open windows (-1: none), each window as end, firings, empty, whether
 * it has its own accumulator and that accumulator ({@link Aggregators.Acc#write}), then its number of panes (-1: the
 * feature has none) and each pane as start, accumulator.
 *
 * <p>Why not Kryo: profiled with JFR on {@code python -m bench.job} over 5,000 items (JVM window operator, heap
 * state, 1 s checkpoints), the window thread spent 39% of its samples in {@code KryoSerializer.copy} (the heap
 * backend deep-copies a state on its first access after each checkpoint, and at 5,000 items nearly every access is
 * such a first one); the asynchronous checkpoint thread, with 28% of all samples to the window thread's 38%, spent
 * 89% of its own in {@code KryoSerializer.serialize} (every item's state at every checkpoint, through reflection
 * and a class registry), on the same 2 cores. A hand-written copy and a flat binary form do the same work
 * without reflection.
 */
public final class ItemWindowsSerializer extends TypeSerializerSingleton<EngagementLogic.ItemWindows> {
    private static final long serialVersionUID = 1L;

    @Override
    public boolean isImmutableType() { return false; }

    @Override
    public EngagementLogic.ItemWindows createInstance() { return new EngagementLogic.ItemWindows(0); }

    @Override
    public EngagementLogic.ItemWindows copy(EngagementLogic.ItemWindows from) { return from.copy(); }

    @Override
    public EngagementLogic.ItemWindows copy(EngagementLogic.ItemWindows from, EngagementLogic.ItemWindows reuse) {
        return from.copy();
    }

    @Override
    public int getLength() { return -1; }

    /**
     * Each item's form is built in memory, then handed to {@code out} in one write: the heap backend writes a
     * checkpoint through a {@code DataOutputViewStreamWrapper}, a {@code DataOutputStream} whose {@code writeInt} and
     * {@code writeBoolean} each make a call into the checkpoint stream per byte (in the 5,000-item profile, the
     * checkpoint thread spent most of its samples there). One buffer per thread: the task thread and the
     * asynchronous checkpoint threads share this serializer ({@link TypeSerializerSingleton#duplicate} is itself).
     */
    private static final ThreadLocal<DataOutputSerializer> BUFFER =
        ThreadLocal.withInitial(() -> new DataOutputSerializer(4096));

    @Override
    public void serialize(EngagementLogic.ItemWindows record, DataOutputView out) throws IOException {
        if (out instanceof DataOutputSerializer) { // already in memory (tests, network buffers)
            write(record, out);
            return;
        }
        DataOutputSerializer buffer = BUFFER.get();
        buffer.clear();
        write(record, buffer);
        out.write(buffer.getSharedBuffer(), 0, buffer.length());
        if (buffer.getSharedBuffer().length > 1 << 20) {
            BUFFER.remove(); // an exceptionally large item's buffer is not kept for the next ones
        }
    }

    private static void write(EngagementLogic.ItemWindows record, DataOutputView out) throws IOException {
        out.writeLong(record.timerMs);
        out.writeInt(record.byFeature.length);
        for (WindowLogic.State state : record.byFeature) {
            out.writeInt(state == null ? -1 : state.size);
            if (state == null) {
                continue;
            }
            for (int j = 0; j < state.size; j++) {
                WindowLogic.Slot slot = state.slots[j];
                out.writeLong(state.ends[j]);
                out.writeInt(slot.firings);
                out.writeBoolean(slot.empty);
                out.writeBoolean(slot.acc != null);
                if (slot.acc != null) {
                    slot.acc.write(out);
                }
            }
            out.writeInt(state.panes == null ? -1 : state.panes.size());
            if (state.panes != null) {
                for (var entry : state.panes.entrySet()) {
                    out.writeLong(entry.getKey());
                    entry.getValue().write(out);
                }
            }
        }
    }

    @Override
    public EngagementLogic.ItemWindows deserialize(DataInputView in) throws IOException {
        long timerMs = in.readLong();
        EngagementLogic.ItemWindows record = new EngagementLogic.ItemWindows(in.readInt());
        record.timerMs = timerMs;
        for (int i = 0; i < record.byFeature.length; i++) {
            int n = in.readInt();
            if (n < 0) {
                continue;
            }
            long[] ends = new long[n];
            WindowLogic.Slot[] slots = new WindowLogic.Slot[n];
            for (int j = 0; j < n; j++) {
                ends[j] = in.readLong();
                if (j > 0 && ends[j] <= ends[j - 1]) {
                    throw new IOException("window ends out of order (" + ends[j - 1] + ", " + ends[j] + "): corrupt state");
                }
                int firings = in.readInt();
                boolean empty = in.readBoolean();
                Aggregators.Acc acc = in.readBoolean() ? Aggregators.read(in) : null;
                slots[j] = new WindowLogic.Slot(acc, firings, empty);
            }
            int p = in.readInt();
            TreeMap<Long, Aggregators.Acc> panes = p < 0 ? null : new TreeMap<>();
            for (int j = 0; j < p; j++) {
                long start = in.readLong();
                panes.put(start, Aggregators.read(in));
            }
            record.byFeature[i] = WindowLogic.State.of(ends, slots, n, panes);
        }
        return record;
    }

    @Override
    public EngagementLogic.ItemWindows deserialize(EngagementLogic.ItemWindows reuse, DataInputView in)
            throws IOException {
        return deserialize(in);
    }

    @Override
    public void copy(DataInputView in, DataOutputView out) throws IOException {
        serialize(deserialize(in), out);
    }

    @Override
    public TypeSerializerSnapshot<EngagementLogic.ItemWindows> snapshotConfiguration() {
        return new Snapshot();
    }

    /** What a checkpoint records of the serializer: nothing but its version (the form is fixed). */
    public static final class Snapshot extends SimpleTypeSerializerSnapshot<EngagementLogic.ItemWindows> {
        public Snapshot() {
            super(ItemWindowsSerializer::new);
        }
    }
}
