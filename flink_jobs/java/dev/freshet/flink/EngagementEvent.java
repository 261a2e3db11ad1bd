package dev.freshet.flink;

/**
 * A checked engagement event on its way to the window operator: what each feature takes from it (a bit per
 * feature whose filter passed, with the value as a float and as a hash) and the raw bytes, read again only for
 * the side-output record of a too-late event. A Flink POJO: public fields, a no-argument constructor.
 */
public class EngagementEvent {
    public long itemId;
    public long tsMs;
    public long taken;
    public double[] numbers;
    public long[] hashes;
    public byte[] raw;

    public EngagementEvent() {}

    /** Whether feature {@code i}'s filter passed. */
    boolean takes(int i) {
        return (taken & (1L << i)) != 0;
    }

    /** The event as each feature of {@code spec} reads it ({@code WindowedFeature.value_of}). */
    static EngagementEvent of(EngagementSpec spec, EventCheck.Parsed parsed, byte[] raw) {
        int n = spec.features.size();
        EngagementEvent event = new EngagementEvent();
        event.itemId = parsed.itemId;
        event.tsMs = parsed.tsMs;
        event.numbers = new double[n];
        event.hashes = new long[n];
        event.raw = raw;
        for (int i = 0; i < n; i++) {
            EngagementSpec.Feature f = spec.features.get(i);
            if (f.filter != null && !Predicate.matches(f.filter, parsed.doc)) {
                continue;
            }
            event.taken |= 1L << i;
            if (f.field == null) {
                continue; // count: the value is not read
            }
            var value = parsed.doc.get(f.field);
            if (f.numeric()) {
                event.numbers[i] = PyValues.number(value);
            } else if ("approx_distinct".equals(f.window.aggregation)) {
                event.hashes[i] = PyValues.stableHash(value);
            }
        }
        return event;
    }
}
