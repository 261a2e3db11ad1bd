package dev.freshet.flink;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/** Raw records → {@link EngagementEvent}; a record that is no event leaves on the side as {@code Row(reason, raw)}. */
final class ParseEngagement extends ProcessFunction<byte[], EngagementEvent> {
    private final EngagementSpec spec;
    private final OutputTag<Row> refused;

    ParseEngagement(EngagementSpec spec, OutputTag<Row> refused) {
        this.spec = spec;
        this.refused = refused;
    }

    @Override
    public void open(OpenContext context) {
        spec.ready();
    }

    @Override
    public void processElement(byte[] raw, Context ctx, Collector<EngagementEvent> out) {
        EventCheck.Parsed parsed = spec.check.parse(raw);
        if (parsed.ok()) {
            out.collect(EngagementEvent.of(spec, parsed, raw));
        } else {
            ctx.output(refused, Row.of(parsed.reason, raw));
        }
    }
}
