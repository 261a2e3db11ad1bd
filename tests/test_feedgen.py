"""The synthetic feed: deterministic, parseable by the declared sources, with the promised bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from freshet.events import Event, Rejected, parse_event
from freshet.feedgen import TOPIC_ENGAGEMENT, FeedConfig, FeedGenerator
from freshet.spec import load_feature_set

START_MS = 1_763_800_000_000
FEATURES = load_feature_set(Path(__file__).parent.parent / "feature_defs")


def parse(record):  # type: ignore[no-untyped-def]
    source = next(s for s in FEATURES.sources if s.topic == record.topic)
    return parse_event(
        record.value,
        source=source.name,
        key_field=FEATURES.entity.key,
        time_field=source.event_time,
        required=dict(source.fields),
    )


@pytest.fixture(scope="module")
def records():  # type: ignore[no-untyped-def]
    config = FeedConfig(malformed_share=0.01, late_share=0.02)
    return list(FeedGenerator(config, START_MS).records(30))


def test_same_seed_same_stream(records) -> None:  # type: ignore[no-untyped-def]
    config = FeedConfig(malformed_share=0.01, late_share=0.02)
    assert list(FeedGenerator(config, START_MS).records(30)) == records


def test_every_record_parses_except_the_deliberately_malformed(records) -> None:  # type: ignore[no-untyped-def]
    results = [parse(r) for r in records]
    rejected = [r for r in results if isinstance(r, Rejected)]
    assert all(r.source == "engagement" for r in rejected)
    reasons = Counter(r.reason_code for r in rejected)
    assert set(reasons) == {"malformed_json", "wrong_type", "absurd_timestamp"}
    engagement = sum(1 for r in records if r.topic == TOPIC_ENGAGEMENT)
    assert 0.002 < len(rejected) / engagement < 0.03
    for record, result in zip(records, results, strict=True):
        if isinstance(result, Event):
            assert str(result.item_id).encode() == record.key


def test_engagement_is_heavy_tailed_and_has_late_events(records) -> None:  # type: ignore[no-untyped-def]
    events = [e for e in map(parse, records) if isinstance(e, Event) and e.source == "engagement"]
    per_item = Counter(e.item_id for e in events).most_common()
    top_share = sum(n for _, n in per_item[: len(per_item) // 100 + 1]) / len(events)
    assert top_share > 0.05, "the top 1% of items should draw a visible share of engagement"
    arrival_max, late = 0, 0
    for e in events:
        late += e.ts_ms < arrival_max - 60_000
        arrival_max = max(arrival_max, e.ts_ms)
    assert late > 0
