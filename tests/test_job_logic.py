"""The delta job's per-source logic, without Flink: parsing, windowed features against the replay oracle,
late-data policies, bounded state, eligibility words, and embeddings from the newest compatible model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from job_streams import (
    T0_MS,
    LogicRun,
    attribute_docs,
    encode_docs,
    engagement_docs,
    feature_rows,
    item_docs,
    oracle_feature_rows,
    social_feed,
    two_tower,
)

from freshet.deltas import DeltaKind, decode_batch, decode_delta, decode_deltas
from freshet.eligibility import EligibilityEncoder
from freshet.events import Event, Rejected
from freshet.job_logic import (
    EligibilityLogic,
    EmbeddingLogic,
    EngagementLogic,
    EventParser,
    ModelWatcher,
    windowed_sources,
)
from freshet.layout import REGION_ELIGIBILITY, REGION_EMBEDDING
from freshet.publish import publish_model
from freshet.versions import eligibility_version, embedding_version, feature_version
from freshet.watermarks import watermarks_after_each
from freshet.windows import END_OF_STREAM, NO_WATERMARK
from freshet.wire import FEATURES_KIND

FS = social_feed()
LAYOUT = FS.layout()
ITEMS = [3, 17, 256, 9_000_000_001]


def parsed(docs: list[dict[str, object]], source: str = "engagement") -> list[Event]:
    parse = EventParser.of(FS, source)
    events = [parse(raw) for raw in encode_docs(docs)]
    assert all(isinstance(e, Event) for e in events), events
    return events  # type: ignore[return-value]


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("source", "raw", "reason"),
    [
        ("engagement", b'{"item_id": 1, "ts": 1700000000000, "user_id": 2, "action": "like"', "malformed_json"),
        ("engagement", b'{"item_id": 1, "ts": 1700000000000, "user_id": "x", "action": "like", "dwell_ms": 1}',
         "wrong_type"),
        ("engagement", b'{"item_id": 1, "ts": 99999999999999999, "user_id": 2, "action": "like", "dwell_ms": 1}',
         "absurd_timestamp"),
        ("items_published", b'{"item_id": 1, "created_at": 1700000000000, "author_id": 1, "title": "t"}',
         "missing_field"),
        ("item_attributes", b"[1, 2]", "not_an_object"),
    ],
)  # fmt: skip
def test_each_source_parses_with_its_declarations(source: str, raw: bytes, reason: str) -> None:
    rejected = EventParser.of(FS, source)(raw)
    assert isinstance(rejected, Rejected) and rejected.reason_code == reason and rejected.raw == raw
    assert json.loads(rejected.to_dlq_json())["raw"].encode("latin-1") == raw


def test_a_good_event_of_each_source_parses() -> None:
    rng = random.Random(0)
    for source, docs in [("engagement", engagement_docs(rng, ITEMS, 3)), ("items_published", item_docs(ITEMS)),
                         ("item_attributes", attribute_docs(rng, ITEMS))]:  # fmt: skip
        assert [e.item_id for e in parsed(docs, source)] == [d["item_id"] for d in docs]


# ------------------------------------------------------------------ windowed features


@pytest.mark.parametrize("seed", range(6))
def test_features_equal_the_replay_oracle_with_out_of_order_and_late_events(seed: int) -> None:
    rng = random.Random(seed)
    docs = engagement_docs(rng, ITEMS, 400, disorder_ms=8_000, late_every=5, late_by_ms=(20_000, 7_200_000))
    events = parsed(docs)
    watermarks = watermarks_after_each(
        [e.ts_ms for e in events], FS.source("engagement").watermark.max_out_of_orderness_ms
    )
    end = END_OF_STREAM if seed % 2 else watermarks[-1] + 3_600_000
    run = LogicRun(EngagementLogic(FS, "engagement"))
    before = NO_WATERMARK
    for event, watermark in zip(events, watermarks, strict=True):
        run.event(event, before)
        run.watermark(watermark)
        before = watermark
    run.watermark(end)

    rows, late, dropped = oracle_feature_rows(FS, events, watermarks, end)
    assert feature_rows(run.deltas, LAYOUT) == rows
    assert len(decode_batch(run.deltas, LAYOUT)) == len(rows), "each firing is emitted once"
    assert len(run.deltas) < len(rows), "features whose windows end together share a FEATURES record"
    late_by_feature: dict[str, int] = {}
    for topic, record in run.lates:
        assert topic == "engagement.late"
        name = json.loads(record)["feature"]
        late_by_feature[name] = late_by_feature.get(name, 0) + 1
    assert late_by_feature == late and run.dropped == dropped
    assert late and dropped, "the stream exercises every late-data policy"
    assert any(v & 0xFFFFF for _, _, v, _, _ in rows), "and late updates within allowed lateness (firing > 0)"
    if end == END_OF_STREAM:
        assert run.states == {}, "every window's state is cleared once the stream ends"


def test_state_is_bounded_by_the_windows_within_allowed_lateness() -> None:
    rng = random.Random(1)
    events = parsed(engagement_docs(rng, ITEMS, 3_000, step_ms=5_000))
    logic = EngagementLogic(FS)
    run = LogicRun(logic)
    watermarks = watermarks_after_each([e.ts_ms for e in events], 5_000)
    peak = 0
    for event, watermark in zip(events, watermarks, strict=True):
        run.event(event, watermark)
        run.watermark(watermark)
        peak = max(peak, max(len(w) for s in run.states.values() for w in s.values()))
    # 1d windows sliding by 1h, plus 5 min of lateness: at most 25 open windows per feature and item
    assert 24 <= peak <= 25, peak
    run.watermark(END_OF_STREAM)
    assert run.states == {} and logic.due_times_ms({}) == []


def test_a_too_late_event_goes_to_its_feature_policy() -> None:
    logic = EngagementLogic(FS, "engagement")
    view, like = parsed(
        [{"item_id": 5, "ts": T0_MS, "user_id": 1, "action": a, "dwell_ms": 10} for a in ("view", "like")]
    )
    watermark = T0_MS + 86_400_000 * 2
    step = logic.on_event({}, view, watermark)
    assert step.deltas == [] and step.states == {}
    assert step.dropped == {"dwell_mean_1h": 1, "dwell_max_1h": 1}, (
        "a view also feeds the dwell features (drop)"
    )
    ((topic, record),) = step.lates
    late = json.loads(record)
    assert (topic, late["feature"], late["item_id"], late["watermark_ms"]) == ("engagement.late", "views_10m", 5,
                                                                                watermark)  # fmt: skip
    assert late["reason"].startswith("late: window") and late["event"]["action"] == "view"
    assert logic.on_event({}, like, watermark).dropped == {
        "likes_1h": 1, "interactions_1h": 1, "unique_likers_1d": 1}  # fmt: skip


def test_a_value_that_is_no_float32_is_counted_not_emitted() -> None:
    logic = EngagementLogic(FS)
    (huge,) = parsed([{"item_id": 5, "ts": T0_MS, "user_id": 1, "action": "view", "dwell_ms": 1e300}])
    states = logic.on_event({}, huge, NO_WATERMARK).states
    step = logic.on_watermark(states, END_OF_STREAM, item_id=5)
    assert step.unencodable == {"dwell_mean_1h": 1, "dwell_max_1h": 1}
    emitted = {
        (d.region, d.version & 0xFFFFF, float(d.values[0]))
        for value in step.deltas
        for d in decode_deltas(value, LAYOUT)
    }
    views, mean, top = (LAYOUT.feature_region(n) for n in ("views_10m", "dwell_mean_1h", "dwell_max_1h"))
    assert {(r, x) for r, _, x in emitted if r in (mean, top)} == {(mean, 0.0), (top, 0.0)}, (
        "only the next, empty windows"
    )
    assert (views, 0, 1.0) in emitted


def test_a_firing_is_an_absolute_versioned_feature_delta() -> None:
    logic = EngagementLogic(FS)
    events = parsed(
        [{"item_id": 8, "ts": T0_MS + i, "user_id": i, "action": "like", "dwell_ms": 1} for i in range(3)]
    )
    states: dict = {}
    for e in events:
        states = logic.on_event(states, e, NO_WATERMARK).states
    assert logic.due_times_ms(states)[0] == T0_MS + 300_000 - 1, "the first 5-minute slide ends first"
    step = logic.on_watermark(states, T0_MS + 300_000 - 1, item_id=8)
    by_region = {d.region: d for v in step.deltas for d in decode_deltas(v, LAYOUT)}
    likes = by_region.pop(LAYOUT.feature_region("likes_1h"))
    assert (likes.kind, likes.item_id, likes.values.tolist()) == (DeltaKind.FEATURE, 8, [3.0])
    assert (likes.version, likes.event_time_ms) == (feature_version(T0_MS + 300_000, 0), T0_MS + 300_000 - 1)
    assert by_region.keys() == {LAYOUT.feature_region("interactions_1h")}, "the other windows end later"
    step = logic.on_watermark(step.states, T0_MS + 3_600_000 - 1, item_id=8)
    uniques = [d for v in step.deltas for d in decode_deltas(v, LAYOUT)
               if d.region == LAYOUT.feature_region("unique_likers_1d")]  # fmt: skip
    assert [d.values.tolist() for d in uniques] == [[3.0]]


def test_windowed_sources_and_an_unknown_source() -> None:
    assert windowed_sources(FS) == ["engagement"]
    with pytest.raises(ValueError, match="no windowed features"):
        EngagementLogic(FS, "item_attributes")


# ------------------------------------------------------------------ eligibility


def test_eligibility_deltas_are_the_encoder_words_versioned_by_event_time() -> None:
    rng = random.Random(2)
    events = parsed(attribute_docs(rng, ITEMS), "item_attributes")
    logic, encoder = EligibilityLogic.of(FS), EligibilityEncoder.of(FS)
    for event in events:
        delta = decode_delta(logic.delta(event), LAYOUT)
        assert (delta.kind, delta.item_id, delta.region) == (
            DeltaKind.ELIGIBILITY,
            event.item_id,
            REGION_ELIGIBILITY,
        )
        assert (delta.version, delta.event_time_ms) == (eligibility_version(event.ts_ms), event.ts_ms)
        assert delta.values.tolist() == encoder.words(event.fields).tolist()
    approved = {"policy_status": "approved", "nsfw": False, "media_type": "video", "duration_s": 60,
                "language": "pt", "region": ["PT"]}  # fmt: skip
    (event,) = parsed([{"item_id": 1, "ts": T0_MS, **approved}], "item_attributes")
    word = decode_delta(logic.delta(event), LAYOUT).values[0]
    assert word & 0b11111 == 0b11101, "policy_ok, is_video, long_video, family_safe; not nsfw"


# ------------------------------------------------------------------ embeddings


def test_embeddings_come_from_the_newest_compatible_model(tmp_path: Path) -> None:
    events = parsed(item_docs(ITEMS), "items_published")
    watcher = ModelWatcher.of(FS, tmp_path, poll_interval_ms=1_000)
    logic = EmbeddingLogic.of(FS)
    assert not watcher.poll(0) and watcher.active is None, "nothing published yet"

    publish_model(tmp_path, "two_tower", two_tower(0), layout_hash=LAYOUT.layout_hash)
    assert not watcher.poll(500), "not due: polls at most every second"
    assert watcher.poll(1_000) and watcher.active is not None and watcher.active.version == 1
    deltas = [decode_delta(d, LAYOUT) for d in logic.deltas(watcher.active, events)]
    expected = two_tower(0).item_tower.embed([e.fields for e in events]).numpy()
    for delta, event, vector in zip(deltas, events, expected, strict=True):
        assert (delta.kind, delta.item_id, delta.region) == (
            DeltaKind.EMBEDDING,
            event.item_id,
            REGION_EMBEDDING,
        )
        assert (delta.version, delta.model_version) == (embedding_version(event.ts_ms), 1)
        np.testing.assert_array_equal(delta.values, vector)

    publish_model(tmp_path, "two_tower", two_tower(1), layout_hash="0" * 16)  # v2: another layout
    assert not watcher.poll(2_000) and watcher.active.version == 1
    assert watcher.rejected == {"layout_hash": 1}
    assert not watcher.poll(3_000) and watcher.rejected == {"layout_hash": 1}, (
        "a refused version is not retried"
    )
    publish_model(tmp_path, "two_tower", two_tower(2), layout_hash=LAYOUT.layout_hash)  # v3
    assert watcher.poll(4_000) and watcher.active.version == 3
    assert logic.deltas(watcher.active, []) == []


# ------------------------------------------------------------------ the JVM engagement path, held to the same streams


def _python_run(raws: list[bytes], watermarks: list[int], end: int) -> LogicRun:
    parse, run, before = (
        EventParser.of(FS, "engagement"),
        LogicRun(EngagementLogic(FS, "engagement")),
        NO_WATERMARK,
    )
    for raw, watermark in zip(raws, watermarks, strict=True):
        event = parse(raw)
        if isinstance(event, Event):
            run.event(event, before)
        run.watermark(watermark)
        before = watermark
    run.watermark(end)
    return run


@pytest.mark.parametrize("seed", range(3))
def test_jvm_engagement_deltas_are_byte_identical_to_python(seed: int) -> None:
    """The stream of the oracle test (out of order, late within and beyond lateness, every policy) and bad records,
    through both: the same delta bytes, side-output records, drop counts and rejections."""
    from jvm_logic import jvm

    rng = random.Random(seed)
    docs = engagement_docs(rng, ITEMS, 400, disorder_ms=8_000, late_every=5, late_by_ms=(20_000, 7_200_000))
    docs[7]["dwell_ms"], docs[9]["dwell_ms"] = 1e300, 0.1  # unencodable as float32; a fraction
    raws = encode_docs(docs)
    raws[50:50] = [b'{"item_id": 1, "ts": 1700000000000', b"[1]", b'{"item_id": -1, "ts": 1700000000000}']
    events = [e for e in map(EventParser.of(FS, "engagement"), raws) if isinstance(e, Event)]
    wm_of_event = iter(watermarks_after_each([e.ts_ms for e in events], 5_000))
    watermarks, last = [], NO_WATERMARK
    for raw in raws:  # a rejected record does not move the watermark
        last = next(wm_of_event) if isinstance(EventParser.of(FS, "engagement")(raw), Event) else last
        watermarks.append(last)
    end = END_OF_STREAM if seed % 2 else watermarks[-1] + 3_600_000
    python = _python_run(raws, watermarks, end)
    steps: list[tuple[object, ...]] = []
    before = NO_WATERMARK
    for raw, watermark in zip(raws, watermarks, strict=True):
        steps += [("event", raw, before), ("wm", watermark)]
        before = watermark
    java = jvm().engagement(FS, "engagement", [*steps, ("wm", end)])

    assert sorted(java["deltas"]) == sorted(python.deltas)
    assert len(decode_batch(python.deltas, LAYOUT)) > 500, "a stream that fires many windows"
    assert any(d[3] == FEATURES_KIND for d in python.deltas), "and FEATURES records among them"
    assert [(t, json.loads(r)) for t, r in java["lates"]] == [(t, json.loads(r)) for t, r in python.lates]
    assert java["lates"] and java["dropped"] == python.dropped and python.dropped
    assert [r.split(":")[0] for r in java["rejected"]] == ["malformed_json", "not_an_object", "wrong_type"]


@pytest.mark.parametrize(
    "raw",
    [b'{"item_id": 1, "ts": 1700000000000, "user_id": 2, "action": "like", "dwell_ms": 1}',
     b'{"item_id": 1, "ts": "2023-11-14T22:13:20.123Z", "user_id": 2, "action": "like", "dwell_ms": 1.5}',
     b'{"item_id": 1, "ts": "2023-11-14T23:13:20.000001+01:00", "user_id": 2, "action": "x", "dwell_ms": 1}',
     b'{"item_id": 1, "ts": 1700000000000, "user_id": 2, "action": "like", "dwell_ms": 1} x',
     b'{"item_id": 1, "ts": 1700000000000.0, "user_id": 2, "action": "like", "dwell_ms": 1}',
     b'{"item_id": true, "ts": 1700000000000, "user_id": 2, "action": "like", "dwell_ms": 1}',
     b'{"item_id": 9223372036854775808, "ts": 1700000000000, "user_id": 2, "action": "like", "dwell_ms": 1}',
     b'{"item_id": 1, "ts": 1700000000000, "user_id": 2.0, "action": "like", "dwell_ms": 1}',
     b'{"item_id": 1, "ts": 1700000000000, "user_id": 2, "action": null, "dwell_ms": 1}',
     b'{"item_id": 1, "ts": 1700000000000, "user_id": 2, "action": "like", "dwell_ms": true}',
     b'{"item_id": 1, "ts": 999999999999, "user_id": 2, "action": "like", "dwell_ms": 1}',
     b'{"item_id": 1, "ts": "2023-11-14T22:13:20", "user_id": 2, "action": "like", "dwell_ms": 1}',
     b'{"item_id": 1, "user_id": 2, "action": "like", "dwell_ms": 1}', b"\xff\xfe", b"", b'"x"'],
)  # fmt: skip
def test_jvm_parser_accepts_and_refuses_what_python_does(raw: bytes) -> None:
    from jvm_logic import jvm

    python = EventParser.of(FS, "engagement")(raw)
    (java,) = jvm().parse(FS, "engagement", [raw])
    if isinstance(python, Event):
        assert java == [python.item_id, python.ts_ms]
    else:
        assert isinstance(java, str) and java.split(":")[0] == python.reason_code
