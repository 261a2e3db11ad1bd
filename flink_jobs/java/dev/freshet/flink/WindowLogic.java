package dev.freshet.flink;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.TreeMap;

/**
 * The per-item window state machine of one feature: {@code freshet.windows.WindowOperator}, rule for rule (read
 * its docstring for the semantics). The differences are mechanical: the state, one item's open windows by end,
 * is changed in place instead of copied, and an event's value comes as a float and a hash.
 *
 * <p>Panes: a sliding approx_distinct window (an aggregation that merges exactly, {@link Aggregators#mergesExactly})
 * keeps no accumulator of its own; each event goes into one pane ({@code gcd(size, slide)} wide) and a window's value is
 * the merge of its panes when it fires. An event then costs one add instead of one per window it is in (24 for a
 * 1-day window sliding by the hour), and the state holds each distinct hash once instead of in every window.
 * This is exact because every window in the state takes every event of its range that arrives while it is open
 * ({@code onEvent} first clears the windows the watermark closed, so each one left is open to the event). The
 * one way a window could miss events of its panes is to be created after them (a window cleared, then made
 * again under a lower watermark, or armed over older events): such a window keeps its own accumulator, as every
 * window of the other features does.
 */
final class WindowLogic {
    /**
     * One open window: its accumulator (null: it reads the panes), how many times it fired, whether no event
     * joined it (armed).
     */
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
            return new Slot(acc == null ? null : acc.copy(), firings, empty);
        }
    }

    /**
     * One item's state of one feature: its open windows by ascending end and, where the feature has panes, those by
     * start. The windows are two parallel arrays, not a {@code TreeMap}: an item has a few dozen of them, new ones come
     * at the end and expired ones leave from the front, and in the 5,000-item JFR profile of {@code python -m
     * bench.job} the window thread spent most of its samples walking, searching and re-queueing tree nodes (a
     * {@code PriorityQueue} of the ends per firing watermark). The least watermark at which the state needs attention
     * is kept until the state changes: every feature asks it at every event of its item.
     */
    static final class State {
        long[] ends;
        Slot[] slots;
        int size;
        /** Null where the feature has no panes; otherwise the panes an event went into, none before the oldest window. */
        final TreeMap<Long, Aggregators.Acc> panes;
        private boolean dueKnown;
        private long dueMs;

        State(int capacity, TreeMap<Long, Aggregators.Acc> panes) {
            this.ends = new long[capacity];
            this.slots = new Slot[capacity];
            this.panes = panes;
        }

        /** A state of {@code n} windows, {@code ends} ascending (what {@link ItemWindowsSerializer} read). */
        static State of(long[] ends, Slot[] slots, int n, TreeMap<Long, Aggregators.Acc> panes) {
            State state = new State(0, panes);
            state.ends = ends;
            state.slots = slots;
            state.size = n;
            return state;
        }

        boolean isEmpty() {
            return size == 0;
        }

        /** The window ending at {@code end}, or null. */
        Slot get(long end) {
            int at = Arrays.binarySearch(ends, 0, size, end);
            return at >= 0 ? slots[at] : null;
        }

        /** Adds the window ending at {@code end}, which must not be open yet. */
        void put(long end, Slot slot) {
            int at = -Arrays.binarySearch(ends, 0, size, end) - 1;
            if (at < 0) {
                throw new IllegalStateException("window ending at " + end + " is open already");
            }
            if (size == ends.length) {
                int capacity = Math.max(4, 2 * size);
                ends = Arrays.copyOf(ends, capacity);
                slots = Arrays.copyOf(slots, capacity);
            }
            System.arraycopy(ends, at, ends, at + 1, size - at);
            System.arraycopy(slots, at, slots, at + 1, size - at);
            ends[at] = end;
            slots[at] = slot;
            size++;
            changed();
        }

        /** Removes the {@code n} oldest windows. */
        void dropFirst(int n) {
            if (n == 0) {
                return;
            }
            System.arraycopy(ends, n, ends, 0, size - n);
            System.arraycopy(slots, n, slots, 0, size - n);
            Arrays.fill(slots, size - n, size, null);
            size -= n;
            changed();
        }

        /** A window's firings changed, or a window came or went: the next due time is computed again. */
        void changed() {
            dueKnown = false;
        }

        /** A deep copy: what the heap state backend keeps for a checkpoint while this one changes. */
        State copy() {
            TreeMap<Long, Aggregators.Acc> p = null;
            if (panes != null) {
                p = new TreeMap<>(panes); // linear: built sorted
                for (var entry : p.entrySet()) {
                    entry.setValue(entry.getValue().copy());
                }
            }
            State c = new State(size, p);
            System.arraycopy(ends, 0, c.ends, 0, size);
            for (int i = 0; i < size; i++) {
                c.slots[i] = slots[i].copy();
            }
            c.size = size;
            c.dueKnown = dueKnown;
            c.dueMs = dueMs;
            return c;
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
    /** Width of a pane; 0: every window keeps its own accumulator (tumbling windows, every other aggregation). */
    final long paneMs;

    WindowLogic(String aggregation, long sizeMs, Long slideMs, long latenessMs, String latePolicy,
                double defaultValue) {
        this.aggregation = aggregation;
        this.sizeMs = sizeMs;
        this.stepMs = slideMs == null ? sizeMs : slideMs;
        this.latenessMs = latenessMs;
        this.latePolicy = latePolicy;
        this.defaultValue = defaultValue;
        Aggregators.initial(aggregation); // refuses an unknown name now, not at the first event
        // Only approx_distinct: its add searches and grows a sorted array, and each hash sat in every window of its
        // range (24 copies in a 1-day window sliding by the hour). For count, min, max and last an add is a
        // comparison or an increment, so panes saved nothing per event and cost a merge per firing: with panes for
        // every exactly merging aggregation, python -m bench.job over 5,000 items took 21.0-22.3 job CPU seconds,
        // against 18.4-20.3 without panes and 16.9-20.3 (four runs of five) with panes for approx_distinct only.
        boolean panes = stepMs < sizeMs && "approx_distinct".equals(aggregation)
            && Aggregators.mergesExactly(aggregation);
        this.paneMs = panes ? java.math.BigInteger.valueOf(sizeMs).gcd(java.math.BigInteger.valueOf(stepMs)).longValue() : 0;
    }

    /** An empty state of this feature. */
    State initial() {
        return new State(0, paneMs > 0 ? new TreeMap<>() : null);
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
    List<Output> onEvent(State state, long tsMs, double number, long hash, long watermarkMs) {
        List<Output> outputs = new ArrayList<>(4);
        advance(state, watermarkMs, outputs);
        long[] starts = windowStarts(tsMs);
        Slot[] joined = new Slot[starts.length]; // null: too late for that window
        for (int i = 0; i < starts.length; i++) {
            long end = starts[i] + sizeMs;
            if (end - 1 + latenessMs <= watermarkMs) {
                continue;
            }
            Slot slot = state.get(end);
            if (slot == null) {
                slot = open(state, end, false); // before the event is in a pane: a new window has not seen it
                state.put(end, slot);
            }
            slot.empty = false;
            joined[i] = slot;
        }
        if (joined[starts.length - 1] == null) { // the newest window is the last to close
            outputs.add(tooLate(starts[starts.length - 1], tsMs, watermarkMs));
            return outputs;
        }
        if (state.panes != null) {
            state.panes.computeIfAbsent(tsMs - Math.floorMod(tsMs, paneMs), k -> Aggregators.initial(aggregation))
                .add(number, hash, tsMs);
        }
        for (int i = 0; i < starts.length; i++) {
            Slot slot = joined[i];
            if (slot == null) {
                continue;
            }
            if (slot.acc != null) {
                slot.acc.add(number, hash, tsMs);
            }
            long end = starts[i] + sizeMs;
            if (end - 1 <= watermarkMs) { // already due: (re-)fire with the corrected value
                outputs.add(fire(starts[i], end, result(state, slot, end), slot.firings));
                slot.firings++;
                state.changed();
                armNext(state, end);
            }
        }
        advance(state, watermarkMs, outputs);
        return outputs;
    }

    /** The watermark advanced: fire windows it passed (arming the next ones), clear expired ones. */
    List<Output> onWatermark(State state, long watermarkMs) {
        if (state.isEmpty() || nextDueMs(state) > watermarkMs) {
            return List.of();
        }
        List<Output> outputs = new ArrayList<>(4);
        advance(state, watermarkMs, outputs);
        return outputs;
    }

    /**
     * {@link #onWatermark} into {@code outputs}. Windows are visited by ascending end, and a window that a firing
     * arms ends after the one that fired, so it is visited in turn (and fires at once if the watermark passed it
     * too); windows expire by ascending end as well, so the expired ones are a prefix, cleared at the end.
     */
    private void advance(State state, long watermarkMs, List<Output> outputs) {
        if (state.isEmpty() || nextDueMs(state) > watermarkMs) {
            return;
        }
        for (int i = 0; i < state.size; i++) {
            long end = state.ends[i];
            Slot slot = state.slots[i];
            if (slot.firings == 0 && end - 1 <= watermarkMs) {
                double value = slot.empty ? defaultValue : result(state, slot, end);
                outputs.add(fire(end - sizeMs, end, value, 0));
                slot.firings = 1;
                state.changed();
                if (!slot.empty) {
                    armNext(state, end);
                }
            }
        }
        int expired = 0;
        while (expired < state.size && state.ends[expired] - 1 + latenessMs <= watermarkMs) {
            expired++;
        }
        state.dropFirst(expired);
        dropUnreadPanes(state);
    }

    /**
     * The least watermark at which {@code onWatermark} acts on {@code state} (Long.MAX_VALUE: never): the least of
     * {@code end - 1} (not fired yet) and {@code end - 1 + lateness} (fired, cleared then) over the windows. Ends
     * ascend and lateness is not negative, so no window after the first unfired one can be due before it: the scan
     * stops there, after the one or two fired windows still inside their lateness. Kept in the state until it changes.
     */
    long nextDueMs(State state) {
        if (!state.dueKnown) {
            state.dueMs = scanDueMs(state);
            state.dueKnown = true;
        }
        return state.dueMs;
    }

    private long scanDueMs(State state) {
        long due = Long.MAX_VALUE;
        for (int i = 0; i < state.size; i++) {
            long end = state.ends[i];
            if (state.slots[i].firings == 0) {
                return Math.min(due, end - 1);
            }
            due = Math.min(due, end - 1 + latenessMs);
        }
        return due;
    }

    /** Every watermark at which {@code onWatermark} acts ({@code due_times_ms}), for the equivalence tests. */
    List<Long> dueTimesMs(State state) {
        java.util.TreeSet<Long> due = new java.util.TreeSet<>();
        for (int i = 0; i < state.size; i++) {
            long end = state.ends[i];
            Slot slot = state.slots[i];
            due.add(end - 1 + latenessMs);
            if (slot.firings == 0) {
                due.add(end - 1);
                long armed = end + stepMs;
                if (!slot.empty && state.get(armed) == null) {
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

    private void armNext(State state, long end) {
        long armed = end + stepMs;
        if (state.get(armed) == null) {
            state.put(armed, open(state, armed, true));
        }
    }

    /** A new window ending at {@code end}: on the panes unless they already hold events it never took. */
    private Slot open(State state, long end, boolean empty) {
        boolean onPanes = state.panes != null && state.panes.subMap(end - sizeMs, end).isEmpty();
        return new Slot(onPanes ? null : Aggregators.initial(aggregation), 0, empty);
    }

    /** The value of the window ending at {@code end}: its accumulator, or its panes merged. */
    private double result(State state, Slot slot, long end) {
        if (slot.acc != null) {
            return slot.acc.result();
        }
        Aggregators.Acc merged = Aggregators.initial(aggregation);
        for (Aggregators.Acc pane : state.panes.subMap(end - sizeMs, end).values()) {
            merged.merge(pane);
        }
        return merged.result();
    }

    /** Panes before the oldest open window: no open window reads them, and a window opened later must not. */
    private void dropUnreadPanes(State state) {
        if (state.panes == null || state.panes.isEmpty()) {
            return;
        }
        if (state.isEmpty()) {
            state.panes.clear();
        } else {
            state.panes.headMap(state.ends[0] - sizeMs).clear();
        }
    }

    private Output tooLate(long newestStart, long tsMs, long watermarkMs) {
        String reason = "late: window [" + newestStart + "," + (newestStart + sizeMs) + ") closed at watermark "
            + watermarkMs;
        int kind = "side_output".equals(latePolicy) ? Output.LATE : Output.DROPPED;
        return new Output(kind, newestStart, newestStart + sizeMs, 0.0, 0, tsMs, watermarkMs, reason);
    }
}
