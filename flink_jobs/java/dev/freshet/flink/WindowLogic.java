package dev.freshet.flink;

import java.util.ArrayList;
import java.util.List;
import java.util.PriorityQueue;
import java.util.TreeMap;

/**
 * The per-item window state machine of one feature: {@code freshet.windows.WindowOperator}, rule for rule (read
 * its docstring for the semantics). The differences are mechanical: the state, one item's open windows by end,
 * is changed in place instead of copied, and an event's value comes as a float and a hash.
 */
final class WindowLogic {
    /** One open window: its accumulator, how many times it fired, whether no event joined it (armed). */
    static final class Slot {
        Aggregators.Acc acc;
        int firings;
        boolean empty;

        Slot() {}

        Slot(Aggregators.Acc acc, int firings, boolean empty) {
            this.acc = acc;
            this.firings = firings;
            this.empty = empty;
        }

        Slot copy() {
            return new Slot(acc.copy(), firings, empty);
        }
    }

    /** A firing, or an event too late for every window it belongs to. */
    static final class Output {
        static final int FIRE = 0;
        static final int LATE = 1;
        static final int DROPPED = 2;

        final int kind;
        final long startMs;
        final long endMs;
        final double value;
        final int firing;
        final long eventTsMs;
        final long watermarkMs;
        final String reason;

        Output(int kind, long startMs, long endMs, double value, int firing, long eventTsMs, long watermarkMs,
               String reason) {
            this.kind = kind;
            this.startMs = startMs;
            this.endMs = endMs;
            this.value = value;
            this.firing = firing;
            this.eventTsMs = eventTsMs;
            this.watermarkMs = watermarkMs;
            this.reason = reason;
        }
    }

    final String aggregation;
    final long sizeMs;
    final long stepMs;
    final long latenessMs;
    final String latePolicy;
    final double defaultValue;

    WindowLogic(String aggregation, long sizeMs, Long slideMs, long latenessMs, String latePolicy,
                double defaultValue) {
        this.aggregation = aggregation;
        this.sizeMs = sizeMs;
        this.stepMs = slideMs == null ? sizeMs : slideMs;
        this.latenessMs = latenessMs;
        this.latePolicy = latePolicy;
        this.defaultValue = defaultValue;
        Aggregators.initial(aggregation); // refuses an unknown name now, not at the first event
    }

    /** Starts of the windows holding an event at {@code tsMs}, oldest first. */
    long[] windowStarts(long tsMs) {
        long lastStart = tsMs - Math.floorMod(tsMs, stepMs);
        long firstStart = lastStart - Math.floorDiv(sizeMs - 1 - (tsMs - lastStart), stepMs) * stepMs;
        long[] starts = new long[(int) ((lastStart - firstStart) / stepMs + 1)];
        for (int i = 0; i < starts.length; i++) {
            starts[i] = firstStart + i * stepMs;
        }
        return starts;
    }

    /** One event arriving while the watermark is {@code watermarkMs}; outputs in order. */
    List<Output> onEvent(TreeMap<Long, Slot> state, long tsMs, double number, long hash, long watermarkMs) {
        List<Output> outputs = onWatermark(state, watermarkMs);
        long[] starts = windowStarts(tsMs);
        boolean joinedAny = false;
        for (long start : starts) {
            long end = start + sizeMs;
            if (end - 1 + latenessMs <= watermarkMs) {
                continue; // too late for this window
            }
            joinedAny = true;
            Slot slot = state.get(end);
            if (slot == null) {
                slot = new Slot(Aggregators.initial(aggregation), 0, false);
            }
            slot.empty = false;
            slot.acc.add(number, hash, tsMs);
            if (end - 1 <= watermarkMs) { // already due: (re-)fire with the corrected value
                outputs.add(fire(start, end, slot.acc.result(), slot.firings));
                slot.firings++;
                armNext(state, end);
            }
            state.put(end, slot);
        }
        if (!joinedAny) {
            outputs.add(tooLate(starts[starts.length - 1], tsMs, watermarkMs));
            return outputs;
        }
        outputs.addAll(onWatermark(state, watermarkMs));
        return outputs;
    }

    /** The watermark advanced: fire windows it passed (arming the next ones), clear expired ones. */
    List<Output> onWatermark(TreeMap<Long, Slot> state, long watermarkMs) {
        List<Output> outputs = new ArrayList<>();
        if (state.isEmpty() || nextDueMs(state) > watermarkMs) {
            return outputs;
        }
        PriorityQueue<Long> ends = new PriorityQueue<>(state.keySet());
        while (!ends.isEmpty()) {
            long end = ends.poll();
            Slot slot = state.get(end);
            if (slot.firings == 0 && end - 1 <= watermarkMs) {
                double value = slot.empty ? defaultValue : slot.acc.result();
                outputs.add(fire(end - sizeMs, end, value, 0));
                slot.firings = 1;
                if (!slot.empty && armNext(state, end)) {
                    ends.add(end + stepMs);
                }
            }
            if (end - 1 + latenessMs <= watermarkMs) {
                state.remove(end);
            }
        }
        return outputs;
    }

    /**
     * The least watermark at which {@code onWatermark} acts on {@code state} (Long.MAX_VALUE: never): the least of
     * {@code end - 1} (not fired yet) and {@code end - 1 + lateness} (fired, cleared then) over the windows. Ends
     * ascend and lateness is not negative, so no window after the first unfired one can be due before it: the scan
     * stops there, after the one or two fired windows still inside their lateness (it walked every window before:
     * a quarter of the window operator's time in the 5,000-item profile).
     */
    long nextDueMs(TreeMap<Long, Slot> state) {
        long due = Long.MAX_VALUE;
        for (var entry : state.entrySet()) {
            long end = entry.getKey();
            if (entry.getValue().firings == 0) {
                return Math.min(due, end - 1);
            }
            due = Math.min(due, end - 1 + latenessMs);
        }
        return due;
    }

    /** Every watermark at which {@code onWatermark} acts ({@code due_times_ms}), for the equivalence tests. */
    List<Long> dueTimesMs(TreeMap<Long, Slot> state) {
        java.util.TreeSet<Long> due = new java.util.TreeSet<>();
        for (var entry : state.entrySet()) {
            long end = entry.getKey();
            Slot slot = entry.getValue();
            due.add(end - 1 + latenessMs);
            if (slot.firings == 0) {
                due.add(end - 1);
                long armed = end + stepMs;
                if (!slot.empty && !state.containsKey(armed)) {
                    due.add(armed - 1);
                    due.add(armed - 1 + latenessMs);
                }
            }
        }
        return new ArrayList<>(due);
    }

    private Output fire(long start, long end, double value, int firing) {
        return new Output(Output.FIRE, start, end, value, firing, end - 1, 0, null);
    }

    private boolean armNext(TreeMap<Long, Slot> state, long end) {
        long armed = end + stepMs;
        if (state.containsKey(armed)) {
            return false;
        }
        state.put(armed, new Slot(Aggregators.initial(aggregation), 0, true));
        return true;
    }

    private Output tooLate(long newestStart, long tsMs, long watermarkMs) {
        String reason = "late: window [" + newestStart + "," + (newestStart + sizeMs) + ") closed at watermark "
            + watermarkMs;
        int kind = "side_output".equals(latePolicy) ? Output.LATE : Output.DROPPED;
        return new Output(kind, newestStart, newestStart + sizeMs, 0.0, 0, tsMs, watermarkMs, reason);
    }
}
