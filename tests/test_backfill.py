"""Backfill equals the stream recomputed by brute force, is point-in-time correct, and reads both log formats.

The oracle replays each source event by event, as the job sees it: every parsed event with the
watermark after it (``freshet.watermarks``), each windowed feature through its own
``freshet.replay.StreamReplay``, every firing encoded as a FEATURE delta, every attribute and publish
event as an ELIGIBILITY or EMBEDDING delta, all applied to an ``IndexModel`` in arrival order. It stops
where the watermark reaches ``until``, as the stream's state at that watermark does. Backfill's
vectorized path shares none of that code but the parser, the window operator's rules (via the oracle)
and the encoders.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from freshet.cli import main as cli_main
from freshet.deltas import Delta, DeltaKind, decode_batch, encode_delta
from freshet.eligibility import EligibilityEncoder
from freshet.events import Event
from freshet.feedgen import (
    TOPIC_ATTRIBUTES,
    TOPIC_ENGAGEMENT,
    TOPIC_ITEMS,
    FeedConfig,
    FeedGenerator,
    RawRecord,
)
from freshet.job_logic import EligibilityLogic, EngagementLogic, EventParser, Step
from freshet.layout import REGION_ELIGIBILITY, REGION_EMBEDDING
from freshet.model import IndexModel
from freshet.offline.backfill import EMBED_BATCH, BackfillError, backfill
from freshet.offline.eventlog import (
    EventLogAppender,
    EventLogError,
    read_values,
    topic_files,
    write_event_log,
)
from freshet.publish import PublishedModel, load_published, publish_model
from freshet.replay import StreamReplay
from freshet.snapshot import latest_valid_snapshot
from freshet.spec import FeatureSet, load_feature_set
from freshet.training import build_model
from freshet.versions import eligibility_version, embedding_version
from freshet.watermarks import watermarks_after_each
from freshet.windows import END_OF_STREAM, NO_WATERMARK, Fire, WindowedAggregate, version_for

FEATURE_DEFS = Path(__file__).resolve().parent.parent / "feature_defs"
T0_MS = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000  # a UTC midnight: windows of every size start here
FEED = FeedConfig(seed=3, users=200, posts_per_s=0.5, engagements_per_s=8.0, attribute_changes_per_s=0.4,
                  recent_posts=150, late_share=0.02, late_by_ms=45_000, malformed_share=0.01)  # fmt: skip
SECONDS = 3_900  # past the first hour, so the 1h windows fire too
UNTIL_MS = T0_MS + 3_700_000


@pytest.fixture(scope="module")
def feature_set() -> FeatureSet:
    return load_feature_set(FEATURE_DEFS)


@pytest.fixture(scope="module")
def records() -> list[RawRecord]:
    """The synthetic feed, with about 1% of raw records delivered twice (a little later)."""
    feed = list(FeedGenerator(FEED, start_ms=T0_MS).records(SECONDS))
    rng = random.Random(11)
    for i in sorted(rng.sample(range(len(feed)), k=len(feed) // 100), reverse=True):
        feed.insert(i + rng.randint(1, 20), feed[i])
    return feed


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, feature_set: FeatureSet) -> Path:
    root = tmp_path_factory.mktemp("models")
    publish_model(root, "two_tower", build_model(feature_set, buckets=256, hidden=16),
                  layout_hash=feature_set.layout().layout_hash)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def events_dir(tmp_path_factory: pytest.TempPathFactory, records: list[RawRecord]) -> Path:
    root = tmp_path_factory.mktemp("events")
    write_event_log(records, root, records_per_file=7_000)
    return root


# ---------------------------------------------------------------- the brute-force oracle


def parsed(feature_set: FeatureSet, records: Sequence[RawRecord], source: str) -> list[tuple[Event, int]]:
    """A source's events in arrival order with the watermark after each, cut where it reaches ``until``."""
    declared, parse = feature_set.source(source), EventParser.of(feature_set, source)
    events = [
        e for e in (parse(r.value) for r in records if r.topic == declared.topic) if isinstance(e, Event)
    ]
    after = watermarks_after_each([e.ts_ms for e in events], declared.watermark.max_out_of_orderness_ms)
    return list(zip(events, after, strict=True))


def cut(arrived: list[tuple[Event, int]], until_ms: int | None) -> list[tuple[Event, int]]:
    if until_ms is None:
        return arrived
    before = [NO_WATERMARK] + [w for _, w in arrived[:-1]]
    return [(e, min(w, until_ms)) for (e, w), b in zip(arrived, before, strict=True) if b < until_ms]


def brute_force(
    feature_set: FeatureSet, records: Sequence[RawRecord], until_ms: int | None, model: PublishedModel
) -> IndexModel:
    layout = feature_set.layout()
    deltas: list[Delta] = []
    engagement = cut(parsed(feature_set, records, "engagement"), until_ms)
    for feature in feature_set.features:
        replay: StreamReplay[int] = StreamReplay(WindowedAggregate.from_feature(feature))
        fires = []
        for event, watermark in engagement:
            if feature.filter is None or feature.filter.matches(event.fields):
                value = 1 if feature.field is None else event.fields[feature.field]
                fires += replay.on_event(event.ts_ms, event.item_id, value)
            fires += replay.advance(watermark)
        fires += replay.advance(END_OF_STREAM if until_ms is None else until_ms)
        region = layout.feature_region(feature.name)
        deltas += [Delta(DeltaKind.FEATURE, item, region, version_for(f), f.event_time_ms, np.array([f.value], np.float32))
                   for item, f in fires if isinstance(f, Fire) and abs(f.value) < 3e38]  # fmt: skip
    encoder = EligibilityEncoder.of(feature_set)
    for event, _ in cut(parsed(feature_set, records, "item_attributes"), until_ms):
        if until_ms is None or event.ts_ms <= until_ms:
            deltas.append(Delta(DeltaKind.ELIGIBILITY, event.item_id, REGION_ELIGIBILITY,
                                eligibility_version(event.ts_ms), event.ts_ms, encoder.words(event.fields)))  # fmt: skip
    published = [e for e, _ in cut(parsed(feature_set, records, "items_published"), until_ms)
                 if until_ms is None or e.ts_ms <= until_ms]  # fmt: skip
    deltas += embedding_deltas(feature_set, published, model)
    oracle = IndexModel(layout, model_version=model.version)
    oracle.apply(decode_batch([encode_delta(d, layout) for d in deltas], layout))
    return oracle


def embedding_deltas(feature_set: FeatureSet, events: list[Event], model: PublishedModel) -> list[Delta]:
    """One delta per publish event. The tower's float32 bits depend on the batch it runs in (CPU kernels
    block by batch size), so the oracle embeds in backfill's batches: by item id, ``EMBED_BATCH`` at a time.
    The feed publishes each item once (some raw events twice, which embed alike);
    ``test_embeddings_match_one_at_a_time`` checks the values on their own."""
    distinct = {
        (e.item_id, json.dumps(e.fields, sort_keys=True)): e for e in events
    }  # a raw event sent twice
    events = sorted(distinct.values(), key=lambda e: e.item_id)
    assert len({e.item_id for e in events}) == len(events)
    fields = feature_set.embedding.input_fields
    out = []
    for start in range(0, len(events), EMBED_BATCH):
        chunk = events[start : start + EMBED_BATCH]
        vectors = model.item_tower.embed([{f: e.fields.get(f) for f in fields} for e in chunk]).numpy()
        out += [Delta(DeltaKind.EMBEDDING, e.item_id, REGION_EMBEDDING, embedding_version(e.ts_ms), e.ts_ms, v,
                      model.version) for e, v in zip(chunk, vectors, strict=True)]  # fmt: skip
    return out


def published(feature_set: FeatureSet, models: Path) -> PublishedModel:
    layout = feature_set.layout()
    return load_published(
        models / "two_tower" / "v00000001", layout_hash=layout.layout_hash, dim=layout.embedding_dim
    )


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("until_ms", [T0_MS + 1_234_567, UNTIL_MS, None], ids=["20min", "1h", "end"])
def test_backfill_equals_the_stream_replayed_event_by_event(
    feature_set: FeatureSet, records: list[RawRecord], events_dir: Path, models: Path, until_ms: int | None
) -> None:
    result = backfill(feature_set, events_dir, until_ms, models)
    oracle = brute_force(feature_set, records, until_ms, published(feature_set, models))
    assert result.model.digest() == oracle.digest()
    assert len(result.model) == len(oracle) > 0
    summary = result.summary()
    assert summary["sources"]["engagement"]["rejected"], "the feed's malformed records are counted by reason"
    assert summary["cells"]["feature"] > 0 and summary["cells"]["eligibility"] > 0


class TimedLogic:
    """``EngagementLogic`` over many items with a heap of event-time timers, as Flink's timer service keeps."""

    def __init__(self, logic: EngagementLogic) -> None:
        self.logic, self.states, self.deltas = logic, {}, []
        self.timers: list[tuple[int, int]] = []  # (due watermark, item)

    def event(self, event: Event, watermark_ms: int) -> None:
        self._keep(
            event.item_id, self.logic.on_event(self.states.get(event.item_id, {}), event, watermark_ms)
        )

    def watermark(self, watermark_ms: int) -> None:
        due = set()
        while self.timers and self.timers[0][0] <= watermark_ms:
            due.add(heapq.heappop(self.timers)[1])
        for item in sorted(due):
            self._keep(item, self.logic.on_watermark(self.states.get(item, {}), watermark_ms, item_id=item))

    def _keep(self, item: int, step: Step) -> None:
        self.states[item] = step.states
        for due_ms in self.logic.due_times_ms(step.states):
            heapq.heappush(self.timers, (due_ms, item))
        self.deltas += step.deltas


def test_backfill_equals_the_jobs_own_logic(
    feature_set: FeatureSet, records: list[RawRecord], events_dir: Path, models: Path
) -> None:
    """The job's pure per-source logic (``freshet.job_logic``), driven with event-time timers as Flink keeps
    them, emits deltas that build the model backfill builds."""
    layout, model = feature_set.layout(), published(feature_set, models)
    run = TimedLogic(EngagementLogic(feature_set, "engagement"))
    before = NO_WATERMARK
    for event, watermark in cut(parsed(feature_set, records, "engagement"), UNTIL_MS):
        run.event(event, before)
        run.watermark(watermark)
        before = watermark
    run.watermark(UNTIL_MS)
    eligibility = EligibilityLogic.of(feature_set)
    attributes = [eligibility.delta(e) for e, _ in cut(parsed(feature_set, records, "item_attributes"), UNTIL_MS)
                  if e.ts_ms <= UNTIL_MS]  # fmt: skip
    items = [
        e for e, _ in cut(parsed(feature_set, records, "items_published"), UNTIL_MS) if e.ts_ms <= UNTIL_MS
    ]
    embeddings = [encode_delta(d, layout) for d in embedding_deltas(feature_set, items, model)]
    job = IndexModel(layout, model_version=model.version)
    job.apply(decode_batch([*run.deltas, *attributes, *embeddings], layout))
    assert backfill(feature_set, events_dir, UNTIL_MS, models).model.digest() == job.digest()


def test_the_oracle_sees_a_missing_event(
    feature_set: FeatureSet, records: list[RawRecord], events_dir: Path, models: Path
) -> None:
    """The digest comparison can fail: one like less before ``until`` changes the state."""
    like = next(i for i, r in enumerate(records) if r.topic == TOPIC_ENGAGEMENT and b'"like"' in r.value
                and T0_MS + 3_000_000 < json.loads(r.value)["ts"] < T0_MS + 3_500_000)  # fmt: skip
    oracle = brute_force(
        feature_set, records[:like] + records[like + 1 :], UNTIL_MS, published(feature_set, models)
    )
    assert backfill(feature_set, events_dir, UNTIL_MS, models).model.digest() != oracle.digest()


def test_events_after_until_change_nothing(
    tmp_path: Path, feature_set: FeatureSet, records: list[RawRecord], models: Path
) -> None:
    """Records after the cut (late ones included) and records timed after ``until`` change no tensor."""
    until_ms = T0_MS + 1_800_000
    base = tmp_path / "base"
    write_event_log(records, base)
    expected = backfill(feature_set, base, until_ms, models).model.digest()

    rng = random.Random(5)
    item = json.loads(next(r.value for r in records if r.topic == TOPIC_ITEMS))["item_id"]
    future = [
        future_record(topic, item, until_ms + rng.randint(1, 600_000)) for topic in TOPICS for _ in range(20)
    ]
    late = [
        future_record(topic, item, until_ms - rng.randint(0, 90_000)) for topic in TOPICS for _ in range(20)
    ]
    appended = tmp_path / "appended"
    write_event_log([*records, *late, *future], appended)
    assert backfill(feature_set, appended, until_ms, models).model.digest() == expected

    # timed after until but arriving before the cut, without moving the watermark: skipped alike
    inserted = tmp_path / "inserted"
    write_event_log(insert_before_cut(feature_set, records, until_ms, item), inserted)
    result = backfill(feature_set, inserted, until_ms, models)
    assert result.model.digest() == expected
    assert result.after_until["item_attributes"] > 0 and result.after_until["items_published"] > 0


TOPICS = (TOPIC_ENGAGEMENT, TOPIC_ATTRIBUTES, TOPIC_ITEMS)


def future_record(topic: str, item: int, ts_ms: int) -> RawRecord:
    doc: dict[str, object] = {"item_id": item, "ts": ts_ms}
    if topic == TOPIC_ENGAGEMENT:
        doc |= {"user_id": 1, "action": "like", "dwell_ms": 10.0}
    elif topic == TOPIC_ATTRIBUTES:
        doc |= {"policy_status": "removed", "language": "de", "region": ["DE"], "nsfw": True,
                "media_type": "video", "duration_s": 90}  # fmt: skip
    else:
        doc = {
            "item_id": item,
            "created_at": ts_ms,
            "author_id": 9,
            "title": "later",
            "text": "later",
            "topic": "x",
        }
    return RawRecord(topic, str(item).encode(), json.dumps(doc).encode(), ts_ms)


def insert_before_cut(
    feature_set: FeatureSet, records: list[RawRecord], until_ms: int, item: int
) -> list[RawRecord]:
    """``records`` with, in each topic, records timed just after ``until`` placed where the topic's running
    greatest time is already past theirs (so no watermark moves) and before its watermark reaches ``until``."""
    out = list(records)
    for topic in TOPICS:
        source = next(s for s in feature_set.sources if s.topic == topic)
        time_field = source.event_time
        greatest, position = None, None
        for i, r in enumerate(out):
            if r.topic != topic:
                continue
            ts = (
                json.loads(r.value).get(time_field)
                if r.value.startswith(b"{") and r.value.endswith(b"}")
                else None
            )
            if not isinstance(ts, int) or ts < 1_000_000_000_000:
                continue
            if greatest is not None and greatest - source.watermark.max_out_of_orderness_ms - 1 >= until_ms:
                break
            greatest = ts if greatest is None else max(greatest, ts)
            if greatest > until_ms + 1:
                position = i + 1
        assert position is not None
        out[position:position] = [future_record(topic, item, until_ms + 1)] * 3
    return out


def test_parquet_and_jsonl_logs_give_the_same_model(
    tmp_path: Path, feature_set: FeatureSet, records: list[RawRecord], events_dir: Path, models: Path
) -> None:
    write_event_log(records, tmp_path, "parquet", records_per_file=10_000)
    assert (tmp_path / TOPIC_ENGAGEMENT / "part-000000.parquet").is_file()
    got = backfill(feature_set, tmp_path, UNTIL_MS, models).model.digest()
    assert got == backfill(feature_set, events_dir, UNTIL_MS, models).model.digest()


def test_embeddings_match_one_at_a_time(
    feature_set: FeatureSet, records: list[RawRecord], events_dir: Path, models: Path
) -> None:
    """Backfill's batched embeddings are the item tower's on each publish record (up to batching's rounding)."""
    result = backfill(feature_set, events_dir, UNTIL_MS, models)
    docs = {d["item_id"]: d for d in (json.loads(r.value) for r in records if r.topic == TOPIC_ITEMS)}
    tower = published(feature_set, models).item_tower
    fields = feature_set.embedding.input_fields
    checked = 0
    for item_id, doc in list(docs.items())[:: len(docs) // 25]:
        row = result.model.item(item_id)
        if doc["created_at"] > UNTIL_MS:
            assert row is None or not row["valid"], "published after until: no embedding"
            continue
        assert row is not None and row["versions"]["embedding"] == embedding_version(doc["created_at"])
        alone = tower.embed([{f: doc.get(f) for f in fields}]).numpy()[0]
        np.testing.assert_allclose(row["embedding"], alone, rtol=0, atol=1e-6)
        checked += 1
    assert checked >= 20


def test_an_unknown_model_version_is_refused(feature_set: FeatureSet, events_dir: Path, models: Path) -> None:
    with pytest.raises(BackfillError, match=r"no version 7 \(published: \[1\]\)"):
        backfill(feature_set, events_dir, UNTIL_MS, models, model_version=7)


def test_cli_writes_a_standard_snapshot(
    tmp_path: Path,
    feature_set: FeatureSet,
    events_dir: Path,
    models: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli_main(["backfill", "--defs", str(FEATURE_DEFS), "--events", str(events_dir), "--until",
                     "2023-11-14T01:01:40Z", "--models", str(models), "--out", str(tmp_path / "snaps")])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    loaded = latest_valid_snapshot(tmp_path / "snaps", feature_set.layout())
    assert loaded is not None
    model, manifest = loaded
    assert model.digest() == manifest.digest == summary["digest"]
    assert summary["until_ms"] == UNTIL_MS
    assert model.digest() == backfill(feature_set, events_dir, UNTIL_MS, models).model.digest()


def test_a_directory_without_any_log_is_refused(
    tmp_path: Path, feature_set: FeatureSet, models: Path
) -> None:
    with pytest.raises(BackfillError, match=r"no \*\.jsonl or \*\.parquet under any of .*engagement/"):
        backfill(feature_set, tmp_path / "typo", UNTIL_MS, models)


def test_an_appended_log_reads_back_in_the_order_sent_after_the_files_already_there(tmp_path: Path) -> None:
    records = list(FeedGenerator(FeedConfig(seed=3), start_ms=T0_MS).records(3))
    first, second = records[: len(records) // 2], records[len(records) // 2 :]
    for batch in (first, second):  # two runs of a sender: the second's file sorts after the first's
        log = EventLogAppender(tmp_path)
        log.append(batch[:5])
        log.append(batch[5:])
        log.close()
    for topic in {r.topic for r in records}:
        read = [v for chunk in read_values(topic_files(tmp_path, topic)) for v in chunk]
        assert read == [r.value for r in records if r.topic == topic]
    with pytest.raises(EventLogError, match="newline"):
        EventLogAppender(tmp_path).append([RawRecord(TOPIC_ENGAGEMENT, b"1", b"{\n}", T0_MS)])
