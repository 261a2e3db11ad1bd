package dev.freshet.flink;

import java.util.Map;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * Keyed by item id: the item's windows of every feature of one source, in one {@code ValueState} cleared when no
 * window is open (state is bounded by the windows inside their allowed lateness), and an event-time timer at the
 * next watermark that needs them. Counters: {@code late_side_output_<feature>}, {@code late_dropped_<feature>},
 * {@code unencodable_<feature>}, as the Python operator had.
 */
final class EngagementWindows extends KeyedProcessFunction<Long, EngagementEvent, Row> {
    private final EngagementSpec spec;
    private final Map<String, OutputTag<Row>> lateTags;
    private transient EngagementLogic logic;
    private transient ValueState<EngagementLogic.ItemWindows> windows;
    private transient Counter[] sideOutput;
    private transient Counter[] dropped;
    private transient Counter[] unencodable;

    EngagementWindows(EngagementSpec spec, Map<String, OutputTag<Row>> lateTags) {
        this.spec = spec;
        this.lateTags = lateTags;
    }

    @Override
    public void open(OpenContext context) {
        logic = new EngagementLogic(spec);
        windows = getRuntimeContext().getState(
            new ValueStateDescriptor<>("windows", new ItemWindowsSerializer()));
        int n = spec.features.size();
        sideOutput = new Counter[n];
        dropped = new Counter[n];
        unencodable = new Counter[n];
        var group = getRuntimeContext().getMetricGroup();
        for (int i = 0; i < n; i++) {
            String name = spec.features.get(i).name;
            sideOutput[i] = group.counter("late_side_output_" + name);
            dropped[i] = group.counter("late_dropped_" + name);
            unencodable[i] = group.counter("unencodable_" + name);
        }
    }

    @Override
    public void processElement(EngagementEvent event, Context ctx, Collector<Row> out) throws Exception {
        EngagementLogic.ItemWindows state = current();
        long watermark = ctx.timerService().currentWatermark();
        commit(state, logic.onEvent(state, event, watermark), event.itemId, ctx, out);
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        EngagementLogic.ItemWindows state = current();
        long watermark = Math.max(timestamp, ctx.timerService().currentWatermark());
        long itemId = ctx.getCurrentKey();
        commit(state, logic.onWatermark(state, itemId, watermark), itemId, ctx, out);
    }

    private EngagementLogic.ItemWindows current() throws Exception {
        EngagementLogic.ItemWindows state = windows.value();
        return state == null ? logic.initial() : state;
    }

    private void commit(EngagementLogic.ItemWindows state, EngagementLogic.Step step, long itemId, Context ctx,
                        Collector<Row> out) throws Exception {
        if (state.isEmpty()) {
            windows.clear();
        } else {
            // One timer at the next due time, registered only when that time changes: registering costs a lookup
            // in Flink's timer queue (a tenth of the window operator's time when done at every event). A stale
            // timer finds nothing due; a fired one has moved the due time past itself.
            long due = logic.nextDueMs(state);
            if (due != state.timerMs) {
                ctx.timerService().registerEventTimeTimer(due);
                state.timerMs = due;
            }
            windows.update(state);
        }
        String key = Long.toString(itemId);
        for (byte[] delta : step.deltas) {
            out.collect(Row.of(key, delta));
        }
        for (int i = 0; i < step.lateRecords.size(); i++) {
            sideOutput[step.lateFeatures.get(i)].inc();
            ctx.output(lateTags.get(step.lateTopics.get(i)), Row.of(key, step.lateRecords.get(i)));
        }
        for (int i = 0; i < step.dropped.length; i++) {
            dropped[i].inc(step.dropped[i]);
            unencodable[i].inc(step.unencodable[i]);
        }
    }
}
