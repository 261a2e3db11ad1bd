package dev.freshet.flink;

import java.io.IOException;
import java.util.TreeMap;

import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.base.TypeSerializerSingleton;
import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputView;

/**
 * The Flink serializer of one item's windows ({@link EngagementLogic.ItemWindows}): a count of features, then per
 * feature its number of open windows (-1: none) and each window as end, firings, empty, accumulator
 * ({@link Aggregators.Acc#write}).
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

    @Override
    public void serialize(EngagementLogic.ItemWindows record, DataOutputView out) throws IOException {
        out.writeInt(record.byFeature.length);
        for (TreeMap<Long, WindowLogic.Slot> windows : record.byFeature) {
            out.writeInt(windows == null ? -1 : windows.size());
            if (windows == null) {
                continue;
            }
            for (var entry : windows.entrySet()) {
                WindowLogic.Slot slot = entry.getValue();
                out.writeLong(entry.getKey());
                out.writeInt(slot.firings);
                out.writeBoolean(slot.empty);
                slot.acc.write(out);
            }
        }
    }

    @Override
    public EngagementLogic.ItemWindows deserialize(DataInputView in) throws IOException {
        EngagementLogic.ItemWindows record = new EngagementLogic.ItemWindows(in.readInt());
        for (int i = 0; i < record.byFeature.length; i++) {
            int n = in.readInt();
            if (n < 0) {
                continue;
            }
            TreeMap<Long, WindowLogic.Slot> windows = new TreeMap<>();
            for (int j = 0; j < n; j++) {
                long end = in.readLong();
                int firings = in.readInt();
                boolean empty = in.readBoolean();
                windows.put(end, new WindowLogic.Slot(Aggregators.read(in), firings, empty));
            }
            record.byFeature[i] = windows;
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
