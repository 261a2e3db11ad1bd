package dev.freshet.flink;

import java.io.IOException;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;

/**
 * The windowed features of one source as the JVM operators need them: the JSON document that
 * {@code freshet.engagement_config.engagement_config} derives from the loaded feature definitions and tensor
 * layout (one declaration; nothing here reads YAML).
 */
final class EngagementSpec implements Serializable {
    /** One windowed feature: its window rules, which events it takes, and where its results go. */
    static final class Feature {
        final String name;
        final int region;
        final WindowLogic window;
        final JsonNode filter;
        final String field;
        final String lateTopic;

        Feature(JsonNode f) {
            name = f.get("name").textValue();
            region = f.get("region").intValue();
            JsonNode slide = f.get("slide_ms");
            window = new WindowLogic(f.get("aggregation").textValue(), f.get("size_ms").longValue(),
                slide == null || slide.isNull() ? null : slide.longValue(), f.get("allowed_lateness_ms").longValue(),
                f.get("late_policy").textValue(), f.get("default").doubleValue());
            filter = nullable(f.get("filter"));
            field = text(f.get("field"));
            lateTopic = text(f.get("late_topic"));
        }

        boolean numeric() { return !"count".equals(window.aggregation) && !"approx_distinct".equals(window.aggregation); }
    }

    final String json;
    final String source;
    final byte[] layoutHash;
    /** The layout's number of feature columns: the width of a FEATURES record. */
    final int featureColumns;
    final long maxOutOfOrdernessMs;
    final Long idleTimeoutMs;
    transient EventCheck check;
    transient List<Feature> features;

    EngagementSpec(String json) {
        this.json = json;
        JsonNode doc = read(json);
        source = doc.get("source").textValue();
        layoutHash = HexFormat.of().parseHex(doc.get("layout_hash").textValue());
        featureColumns = doc.get("feature_columns").intValue();
        maxOutOfOrdernessMs = doc.get("max_out_of_orderness_ms").longValue();
        JsonNode idle = doc.get("idle_timeout_ms");
        idleTimeoutMs = idle == null || idle.isNull() ? null : idle.longValue();
        build(doc);
    }

    /** After deserialization in a Flink task: the parts that are not serializable, from the same document. */
    EngagementSpec ready() {
        if (features == null) {
            build(read(json));
        }
        return this;
    }

    private void build(JsonNode doc) {
        Map<String, String> required = new LinkedHashMap<>();
        doc.get("required").fields().forEachRemaining(e -> required.put(e.getKey(), e.getValue().textValue()));
        check = new EventCheck(doc.get("key_field").textValue(), doc.get("time_field").textValue(), required);
        features = new ArrayList<>();
        for (JsonNode f : doc.get("features")) {
            features.add(new Feature(f));
        }
    }

    List<String> lateTopics() {
        List<String> topics = new ArrayList<>();
        for (Feature f : features) {
            if (f.lateTopic != null && !topics.contains(f.lateTopic)) { topics.add(f.lateTopic); }
        }
        return topics;
    }

    private static JsonNode read(String json) {
        try {
            return EventCheck.JSON.readTree(json);
        } catch (IOException e) {
            throw new UncheckedIOException("the engagement configuration is not JSON", e);
        }
    }

    private static JsonNode nullable(JsonNode node) {
        return node == null || node.isNull() ? null : node;
    }

    private static String text(JsonNode node) {
        return node == null || node.isNull() ? null : node.textValue();
    }
}
