package dev.freshet.flink;

import java.math.BigDecimal;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;

/**
 * A feature filter of {@code freshet.spec.predicates}, read from its JSON form ({@code model_dump(by_alias=True,
 * exclude_none=True)}): {@code eq}, {@code in}, {@code contains}, {@code range}, {@code all}, {@code any},
 * {@code not}; with the same rules (a missing or null field fails every test; booleans equal only booleans,
 * strings only strings, numbers by exact value so that 1 equals 1.0).
 */
final class Predicate {
    private Predicate() {}

    static boolean matches(JsonNode predicate, JsonNode record) {
        if (predicate.has("all")) {
            for (JsonNode p : predicate.get("all")) {
                if (!matches(p, record)) { return false; }
            }
            return true;
        }
        if (predicate.has("any")) {
            for (JsonNode p : predicate.get("any")) {
                if (matches(p, record)) { return true; }
            }
            return false;
        }
        if (predicate.has("not")) {
            return !matches(predicate.get("not"), record);
        }
        JsonNode value = record.get(predicate.get("field").textValue());
        if (predicate.has("eq")) {
            return sameValue(value, predicate.get("eq"));
        }
        if (predicate.has("in")) {
            for (JsonNode v : predicate.get("in")) {
                if (sameValue(value, v)) { return true; }
            }
            return false;
        }
        if (predicate.has("contains")) {
            return contains(value, predicate.get("contains"));
        }
        if (predicate.has("range")) {
            return inRange(value, predicate.get("range"));
        }
        throw new IllegalArgumentException("unknown predicate " + predicate);
    }

    static boolean sameValue(JsonNode a, JsonNode b) {
        if (a == null || a.isNull() || b == null || b.isNull()) {
            return false;
        }
        if (a.isBoolean() || b.isBoolean()) {
            return a.isBoolean() && b.isBoolean() && a.booleanValue() == b.booleanValue();
        }
        if (a.isTextual() || b.isTextual()) {
            return a.isTextual() && b.isTextual() && a.textValue().equals(b.textValue());
        }
        if (a.isNumber() && b.isNumber()) {
            return exact(a).compareTo(exact(b)) == 0;
        }
        return false; // a list or an object never equals a scalar
    }

    private static BigDecimal exact(JsonNode number) {
        return number.isIntegralNumber() ? new BigDecimal(number.bigIntegerValue()) : new BigDecimal(number.doubleValue());
    }

    private static boolean contains(JsonNode value, JsonNode wanted) {
        if (value == null || value.isNull()) {
            return false;
        }
        if (!value.isArray()) {
            return sameValue(value, wanted);
        }
        for (JsonNode v : value) {
            if (sameValue(v, wanted)) { return true; }
        }
        return false;
    }

    private static boolean inRange(JsonNode value, JsonNode bounds) {
        if (value == null || !value.isNumber()) {
            return false;
        }
        double number = PyValues.number(value);
        return (!bounds.has("min") || number >= bounds.get("min").doubleValue())
            && (!bounds.has("max") || number <= bounds.get("max").doubleValue());
    }
}
