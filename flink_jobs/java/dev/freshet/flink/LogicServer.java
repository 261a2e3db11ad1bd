package dev.freshet.flink;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

import org.apache.flink.core.memory.DataInputDeserializer;
import org.apache.flink.core.memory.DataOutputSerializer;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ArrayNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;

/**
 * The JVM window logic outside Flink, for the tests that hold it to the Python logic: one JSON request per line on
 * stdin, one JSON answer per line on stdout. Requests: {@code window} (one feature's WindowOperator over a script of
 * events and watermarks), {@code engagement} (every feature of a source over raw records, with per-item event-time
 * timers as Flink keeps them, like {@code tests/job_streams.LogicRun}), {@code parse} (raw records → event or
 * reason). Floats travel as {@code Double.toHexString}, exact. Between steps every state goes through
 * {@link ItemWindowsSerializer} (copied, written, read back), as Flink's heap state does at checkpoints, so the
 * same tests hold the serializer to the logic.
 */
public final class LogicServer {
    private LogicServer() {}

    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        for (String line = in.readLine(); line != null; line = in.readLine()) {
            JsonNode request = EventCheck.JSON.readTree(line);
            ObjectNode answer;
            try {
                answer = answer(request);
            } catch (RuntimeException e) {
                answer = EventCheck.JSON.createObjectNode().put("error", e.toString());
            }
            out.println(EventCheck.JSON.writeValueAsString(answer));
        }
    }

    private static ObjectNode answer(JsonNode request) {
        switch (request.get("op").textValue()) {
            case "window": return window(request.get("feature"), request.get("steps"));
            case "engagement": return engagement(new EngagementSpec(request.get("config").toString()), request.get("steps"));
            case "parse": return parse(new EngagementSpec(request.get("config").toString()), request.get("raws"));
            default: throw new IllegalArgumentException("unknown op " + request.get("op"));
        }
    }

    /** {@code windows} as the window operator finds it after a checkpoint: a copy, written and read back. */
    static EngagementLogic.ItemWindows throughFlink(EngagementLogic.ItemWindows windows) {
        ItemWindowsSerializer serializer = new ItemWindowsSerializer();
        try {
            DataOutputSerializer out = new DataOutputSerializer(256);
            serializer.serialize(serializer.copy(windows), out);
            return serializer.deserialize(new DataInputDeserializer(out.getCopyOfBuffer()));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static WindowLogic.State throughFlink(WindowLogic logic, WindowLogic.State state) {
        EngagementLogic.ItemWindows one = new EngagementLogic.ItemWindows(1);
        one.byFeature[0] = state;
        WindowLogic.State back = throughFlink(one).byFeature[0];
        return back == null ? logic.initial() : back;
    }

    private static ObjectNode window(JsonNode f, JsonNode steps) {
        JsonNode slide = f.get("slide_ms");
        WindowLogic logic = new WindowLogic(f.get("aggregation").textValue(), f.get("size_ms").longValue(),
            slide.isNull() ? null : slide.longValue(), f.get("allowed_lateness_ms").longValue(),
            f.get("late_policy").textValue(), f.get("default").doubleValue());
        WindowLogic.State state = logic.initial();
        ObjectNode answer = EventCheck.JSON.createObjectNode();
        ArrayNode outputs = answer.putArray("outputs");
        for (JsonNode step : steps) {
            List<WindowLogic.Output> outs;
            if ("event".equals(step.get(0).textValue())) {
                JsonNode value = step.get(3);
                boolean numeric = !"count".equals(logic.aggregation) && !"approx_distinct".equals(logic.aggregation);
                double number = numeric ? PyValues.number(value) : 0.0;
                long hash = "approx_distinct".equals(logic.aggregation) ? PyValues.stableHash(value) : 0L;
                outs = logic.onEvent(state, step.get(1).longValue(), number, hash, step.get(2).longValue());
            } else {
                outs = logic.onWatermark(state, step.get(1).longValue());
            }
            state = throughFlink(logic, state);
            for (WindowLogic.Output o : outs) {
                outputs.addArray().add(o.kind).add(o.startMs).add(o.endMs).add(Double.toHexString(o.value))
                    .add(o.firing).add(o.eventTsMs).add(o.watermarkMs).add(o.reason);
            }
        }
        ArrayNode ends = answer.putArray("ends");
        for (int i = 0; i < state.size; i++) {
            ends.add(state.ends[i]);
        }
        ArrayNode due = answer.putArray("due");
        logic.dueTimesMs(state).forEach(due::add);
        return answer;
    }

    private static ObjectNode engagement(EngagementSpec spec, JsonNode steps) {
        EngagementLogic logic = new EngagementLogic(spec);
        Map<Long, EngagementLogic.ItemWindows> states = new LinkedHashMap<>();
        Map<Long, TreeSet<Long>> timers = new LinkedHashMap<>();
        ObjectNode answer = EventCheck.JSON.createObjectNode();
        Totals totals = new Totals(answer, spec);
        for (JsonNode step : steps) {
            if ("event".equals(step.get(0).textValue())) {
                byte[] raw = step.get(1).textValue().getBytes(StandardCharsets.ISO_8859_1);
                EventCheck.Parsed parsed = spec.check.parse(raw);
                if (!parsed.ok()) {
                    totals.rejected.add(parsed.reason);
                    continue;
                }
                EngagementEvent event = EngagementEvent.of(spec, parsed, raw);
                EngagementLogic.ItemWindows windows = states.computeIfAbsent(event.itemId, k -> logic.initial());
                keep(logic, states, timers, event.itemId, windows, logic.onEvent(windows, event, step.get(2).longValue()), totals);
            } else {
                long watermark = step.get(1).longValue();
                for (Long item : List.copyOf(timers.keySet())) {
                    TreeSet<Long> due = timers.get(item);
                    if (due.isEmpty() || due.first() > watermark) { continue; }
                    due.headSet(watermark, true).clear();
                    EngagementLogic.ItemWindows windows = states.computeIfAbsent(item, k -> logic.initial());
                    keep(logic, states, timers, item, windows, logic.onWatermark(windows, item, watermark), totals);
                }
            }
        }
        answer.put("open_items", states.size());
        return answer;
    }

    private static void keep(EngagementLogic logic, Map<Long, EngagementLogic.ItemWindows> states,
                             Map<Long, TreeSet<Long>> timers, long item, EngagementLogic.ItemWindows windows,
                             EngagementLogic.Step step, Totals totals) {
        if (windows.isEmpty()) {
            states.remove(item);
        } else {
            states.put(item, throughFlink(windows));
        }
        TreeSet<Long> due = timers.computeIfAbsent(item, k -> new TreeSet<>());
        for (int i = 0; i < windows.byFeature.length; i++) {
            if (windows.byFeature[i] != null) {
                due.addAll(logic.spec.features.get(i).window.dueTimesMs(windows.byFeature[i]));
            }
        }
        totals.add(step);
    }

    /** The outputs of a whole run, in order, and the counts by feature name. */
    private static final class Totals {
        final ArrayNode deltas;
        final ArrayNode lates;
        final ObjectNode dropped;
        final ObjectNode unencodable;
        final ArrayNode rejected;
        final EngagementSpec spec;

        Totals(ObjectNode answer, EngagementSpec spec) {
            deltas = answer.putArray("deltas");
            lates = answer.putArray("lates");
            dropped = answer.putObject("dropped");
            unencodable = answer.putObject("unencodable");
            rejected = answer.putArray("rejected");
            this.spec = spec;
        }

        void add(EngagementLogic.Step step) {
            step.deltas.forEach(d -> deltas.add(HexFormat.of().formatHex(d)));
            for (int i = 0; i < step.lateTopics.size(); i++) {
                lates.addArray().add(step.lateTopics.get(i)).add(new String(step.lateRecords.get(i), StandardCharsets.UTF_8));
            }
            count(dropped, step.dropped);
            count(unencodable, step.unencodable);
        }

        private void count(ObjectNode counts, int[] byFeature) {
            for (int i = 0; i < byFeature.length; i++) {
                if (byFeature[i] > 0) {
                    String name = spec.features.get(i).name;
                    counts.put(name, counts.path(name).asInt(0) + byFeature[i]);
                }
            }
        }
    }

    private static ObjectNode parse(EngagementSpec spec, JsonNode raws) {
        ObjectNode answer = EventCheck.JSON.createObjectNode();
        ArrayNode results = answer.putArray("results");
        for (JsonNode raw : raws) {
            EventCheck.Parsed parsed = spec.check.parse(raw.textValue().getBytes(StandardCharsets.ISO_8859_1));
            if (parsed.ok()) {
                results.addArray().add(parsed.itemId).add(parsed.tsMs);
            } else {
                results.add(parsed.reason);
            }
        }
        return answer;
    }
}
