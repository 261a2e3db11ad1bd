package dev.freshet.flink;

import java.math.BigInteger;
import java.time.OffsetDateTime;
import java.time.format.DateTimeParseException;
import java.util.Arrays;
import java.util.Map;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.DeserializationFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;

/**
 * {@code freshet.events.parse_event} for the JVM: a raw record is an event when it is one JSON object whose key is
 * a non-negative 64-bit integer, whose event time is epoch milliseconds (or an ISO-8601 time with a zone) within
 * the accepted years, and whose declared fields have their kinds. A record this refuses goes to the dead-letter
 * topic through the Python parser, which writes the reason, so the DLQ keeps one wording. ISO-8601 times are read
 * in the extended form {@code YYYY-MM-DDTHH:MM[:SS[.ffffff]](Z|±HH:MM)}; Python accepts a few more spellings,
 * which this refuses (to the DLQ, with Python's verdict).
 */
final class EventCheck {
    static final long MIN_EVENT_TIME_MS = 1_000_000_000_000L;
    static final long MAX_EVENT_TIME_MS = 4_102_444_800_000L;
    private static final BigInteger MAX_ITEM_ID = BigInteger.valueOf(Long.MAX_VALUE);

    /** Python's json.loads refuses anything after the value; so does this. */
    static final ObjectMapper JSON = new ObjectMapper().enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    /** A parsed event, or why the record is not one (code first, as Python's reasons). */
    static final class Parsed {
        final ObjectNode doc;
        final long itemId;
        final long tsMs;
        final String reason;

        private Parsed(ObjectNode doc, long itemId, long tsMs, String reason) {
            this.doc = doc;
            this.itemId = itemId;
            this.tsMs = tsMs;
            this.reason = reason;
        }

        boolean ok() { return reason == null; }
    }

    private final String keyField;
    private final String timeField;
    private final Map<String, String> required;

    EventCheck(String keyField, String timeField, Map<String, String> required) {
        this.keyField = keyField;
        this.timeField = timeField;
        this.required = required;
    }

    /**
     * The last record read on this thread, and what it parsed to. The Kafka source's timestamp assigner
     * ({@code EngagementJob.EventTime}) and the parser chained after it ({@code ParseEngagement}) read each record
     * in turn on the source's thread; in the 5,000-item profile the first of the two JSON parses took 27% of that
     * thread. The second now finds the record here (same rules, same bytes: same result, nothing is changed).
     */
    private static final ThreadLocal<Memo> LAST = ThreadLocal.withInitial(Memo::new);

    /** One record and its result, for {@link #LAST}. */
    private static final class Memo {
        EventCheck check;
        byte[] raw;
        Parsed parsed;
    }

    Parsed parse(byte[] raw) {
        Memo last = LAST.get();
        if (last.parsed != null && sameRules(last.check) && Arrays.equals(last.raw, raw)) {
            return last.parsed;
        }
        Parsed parsed = parseOnce(raw);
        last.check = this;
        last.raw = raw.clone(); // its own copy: a caller may reuse its array
        last.parsed = parsed;
        return parsed;
    }

    private boolean sameRules(EventCheck other) {
        return other == this || other.keyField.equals(keyField) && other.timeField.equals(timeField)
            && other.required.equals(required);
    }

    private Parsed parseOnce(byte[] raw) {
        JsonNode node;
        try {
            node = JSON.readTree(raw);
        } catch (java.io.IOException | RuntimeException e) {
            return rejected("malformed_json: " + e.getClass().getSimpleName());
        }
        if (node == null || node.isMissingNode() || !node.isObject()) {
            return rejected(node == null || node.isMissingNode() ? "malformed_json: empty" : "not_an_object: "
                + node.getNodeType());
        }
        return check((ObjectNode) node);
    }

    private Parsed check(ObjectNode doc) {
        JsonNode key = doc.get(keyField);
        if (key == null || key.isNull()) {
            return rejected("missing_field: " + keyField);
        }
        if (!key.isIntegralNumber() || !PyValues.within(key, BigInteger.ZERO, MAX_ITEM_ID.add(BigInteger.ONE))) {
            return rejected("wrong_type: " + keyField);
        }
        if (!doc.has(timeField)) {
            return rejected("missing_field: " + timeField);
        }
        Long ts = timeMs(doc.get(timeField));
        if (ts == null) {
            return rejected("wrong_type: " + timeField);
        }
        if (ts < MIN_EVENT_TIME_MS || ts >= MAX_EVENT_TIME_MS) {
            return rejected("absurd_timestamp: " + timeField);
        }
        for (Map.Entry<String, String> field : required.entrySet()) {
            JsonNode value = doc.get(field.getKey());
            if (value == null || value.isNull()) {
                return rejected("missing_field: " + field.getKey());
            }
            if (!isKind(value, field.getValue())) {
                return rejected("wrong_type: " + field.getKey());
            }
        }
        return new Parsed(doc, key.longValue(), ts, null);
    }

    private static Parsed rejected(String reason) {
        return new Parsed(null, 0, 0, reason);
    }

    /** Epoch ms from an integer, or from an ISO-8601 string with a zone as Python computes it; null if neither. */
    static Long timeMs(JsonNode value) {
        if (value.isIntegralNumber()) {
            BigInteger v = value.bigIntegerValue();
            return v.bitLength() < 63 ? v.longValue() : Long.MAX_VALUE; // too large is absurd either way
        }
        if (!value.isTextual()) {
            return null;
        }
        String text = value.textValue().replace("Z", "+00:00");
        int dot = text.indexOf('.');
        if (dot >= 0) {
            int digits = 0;
            while (dot + 1 + digits < text.length() && Character.isDigit(text.charAt(dot + 1 + digits))) { digits++; }
            if (digits > 6) { return null; }
        }
        try {
            OffsetDateTime parsed = OffsetDateTime.parse(text);
            long micros = parsed.toEpochSecond() * 1_000_000L + parsed.getNano() / 1_000;
            // Python: int(parsed.timestamp() * 1000), through a float of seconds
            return (long) (((double) micros / 1e6) * 1000.0);
        } catch (DateTimeParseException e) {
            return null;
        }
    }

    private static boolean isKind(JsonNode v, String kind) {
        switch (kind) {
            case "int": return v.isIntegralNumber();
            case "number":
                return v.isIntegralNumber() ? Double.isFinite(v.bigIntegerValue().doubleValue())
                    : v.isNumber() && Double.isFinite(v.doubleValue());
            case "string": return v.isTextual();
            case "strings":
                if (v.isTextual()) { return true; }
                if (!v.isArray()) { return false; }
                for (JsonNode x : v) {
                    if (!x.isTextual()) { return false; }
                }
                return true;
            case "bool": return v.isBoolean();
            default: return true;
        }
    }
}
