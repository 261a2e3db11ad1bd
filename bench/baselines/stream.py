"""The inputs every system sees: the example layout, a catalog of items, and one timed stream of deltas.

The stream is the synthetic social feed of ``freshet.feedgen`` turned into encoded tensor deltas, each with
the second (from the start of the run) at which it reaches the serving side:

* ``items.published`` → an EMBEDDING delta (a unit vector drawn from the item id);
* ``item.attributes`` → an ELIGIBILITY delta (``freshet.eligibility`` on the full attribute set);
* ``engagement`` → one absolute FEATURE delta per event: the item's running count of that action, as an
  early-firing window trigger emits it. Windows and watermarks sit upstream in Flink and cost the same
  for every design compared here, so they are left out; this is the heaviest delta load the feed makes.

Two kinds of **probe** deltas are woven in, at fixed rates, so that a query can tell how fresh the served
index is. Dimensions 0 and 1 of every catalog and feed embedding are zero; probes live there alone:

* *markers*: ``MARKERS`` catalog items with embedding ``MARKER_SCORE · e0``; a probe sets one marker's
  ``PROBE_COLUMN`` feature (not a score term) to an increasing sequence number (the engagement path);
* *new items*: items published with embedding ``(NEW_ITEM_SCORE + seq · NEW_ITEM_STEP) · e1`` (the
  new-item path), so the newest visible ones rank first.

One query along ``e0 + e1`` with ``k = MARKERS + NEWEST`` returns every marker and the newest visible
probe items, whichever index serves it; user queries have zeros there and never see a probe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from freshet.deltas import Delta, DeltaKind, encode_delta
from freshet.eligibility import EligibilityEncoder
from freshet.feedgen import (
    LANGUAGES,
    REGIONS,
    TOPIC_ATTRIBUTES,
    TOPIC_ENGAGEMENT,
    TOPIC_ITEMS,
    FeedConfig,
    FeedGenerator,
)
from freshet.layout import REGION_ELIGIBILITY, REGION_EMBEDDING, TensorLayout
from freshet.model_state import ModelState
from freshet.spec import FeatureSet, load_feature_set
from freshet.versions import MAX_SEQ, eligibility_version, embedding_version, event_version

#: event time of the first second of the stream (2025-01-01T00:00:00Z)
START_MS = 1_735_689_600_000
FEED_FIRST_ID = 1_000_000_000
MARKER_FIRST_ID = 2_000_000_000
NEW_PROBE_FIRST_ID = 3_000_000_000
MARKERS = 32
NEWEST = 16
MARKER_SCORE = 100.0
NEW_ITEM_SCORE = 50.0
NEW_ITEM_STEP = 1e-3
PROBE_COLUMN = "dwell_max_1h"
ACTION_COLUMNS = {"like": "likes_1h", "share": "shares_1h", "comment": "comments_1h", "view": "views_10m"}
Floats = npt.NDArray[np.float64]


def example_feature_set() -> FeatureSet:
    return load_feature_set("feature_defs")


@dataclass(frozen=True)
class StreamConfig:
    """How much feed, at which rates (``rate_scale`` multiplies the feed's default rates), and probe rates."""

    seconds: int
    rate_scale: float = 1.0
    marker_probes_per_s: float = 10.0
    new_item_probes_per_s: float = 2.0
    seed: int = 7

    def feed(self) -> FeedConfig:
        base = FeedConfig(seed=self.seed, first_item_id=FEED_FIRST_ID)
        return FeedConfig(
            seed=self.seed,
            first_item_id=FEED_FIRST_ID,
            posts_per_s=base.posts_per_s * self.rate_scale,
            engagements_per_s=base.engagements_per_s * self.rate_scale,
            attribute_changes_per_s=base.attribute_changes_per_s * self.rate_scale,
        )


@dataclass
class Stream:
    """Encoded deltas in arrival order, ``arrival_s[i]`` after the start; and what each probe was."""

    arrival_s: Floats
    records: list[bytes]
    marker_arrival_s: Floats
    marker_index: npt.NDArray[np.int64]
    marker_seq: npt.NDArray[np.int64]
    new_item_arrival_s: Floats
    new_item_seq: npt.NDArray[np.int64]
    new_items: int  # items the stream publishes (feed and probes): room the systems reserve
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Length of the stream: the last whole second it covers."""
        return float(np.ceil(self.arrival_s[-1])) if len(self.records) else 0.0

    def prefix(self, seconds: float) -> Stream:
        """The deltas that arrive in the first ``seconds``: the same stream, cut shorter."""
        n = int(np.searchsorted(self.arrival_s, seconds, side="left"))
        markers = self.marker_arrival_s < seconds
        new = self.new_item_arrival_s < seconds
        return Stream(self.arrival_s[:n], self.records[:n], self.marker_arrival_s[markers],
                      self.marker_index[markers], self.marker_seq[markers], self.new_item_arrival_s[new],
                      self.new_item_seq[new], self.new_items, dict(self.counts))  # fmt: skip


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    """``n`` random unit vectors with dimensions 0 and 1 (the probe channels) zero.

    >>> v = unit_vectors(np.random.default_rng(0), 3, 8); v[:, :2].any(), np.allclose((v**2).sum(1), 1)
    (np.False_, True)
    """
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v[:, :2] = 0
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def build_stream(config: StreamConfig, feature_set: FeatureSet) -> Stream:
    """The feed's first ``config.seconds`` seconds as timed deltas, probes included (deterministic)."""
    layout = feature_set.layout()
    builder = _DeltaBuilder(layout, EligibilityEncoder.of(feature_set))
    feed = FeedGenerator(config.feed(), start_ms=START_MS)
    arrival: list[float] = []
    records: list[bytes] = []
    for second in range(config.seconds):
        raw = feed.second(second)
        for i, record in enumerate(raw):
            at_s = second + (i + 0.5) / len(raw)
            value = builder.feed_delta(record.topic, record.value, at_s)
            if value is not None:
                arrival.append(at_s)
                records.append(value)
    probes = _probes(config, builder)
    merged = sorted(zip(arrival + probes[0], records + probes[1], strict=True), key=lambda p: p[0])
    return Stream(
        arrival_s=np.array([a for a, _ in merged]),
        records=[r for _, r in merged],
        marker_arrival_s=probes[2],
        marker_index=probes[3],
        marker_seq=probes[4],
        new_item_arrival_s=probes[5],
        new_item_seq=probes[6],
        new_items=builder.published + len(probes[6]),
        counts=builder.counts | {"probe_deltas": len(probes[0])},
    )


def _probes(config: StreamConfig, builder: _DeltaBuilder) -> tuple:  # type: ignore[type-arg]
    """Marker and new-item probe deltas at fixed rates, offset so they never share an arrival time."""
    markers_at = np.arange(0.013, config.seconds, 1 / config.marker_probes_per_s)
    seq = np.arange(1, len(markers_at) + 1)
    index = (seq - 1) % MARKERS
    new_at = np.arange(0.037, config.seconds, 1 / config.new_item_probes_per_s)
    new_seq = np.arange(1, len(new_at) + 1)
    values = [
        builder.marker_delta(int(m), int(s), float(t)) for m, s, t in zip(index, seq, markers_at, strict=True)
    ]
    values += [builder.new_item_probe(int(s), float(t)) for s, t in zip(new_seq, new_at, strict=True)]
    return (list(markers_at) + list(new_at), values, markers_at, index, seq, new_at, new_seq)


class _DeltaBuilder:
    """Raw feed records → encoded deltas, with the running counts the engagement deltas carry."""

    def __init__(self, layout: TensorLayout, encoder: EligibilityEncoder) -> None:
        self.layout, self.encoder = layout, encoder
        self.regions = {a: layout.feature_region(c) for a, c in ACTION_COLUMNS.items()}
        self.probe_region = layout.feature_region(PROBE_COLUMN)
        self.running: dict[tuple[int, int], int] = {}
        self.counts: dict[str, int] = {"embedding": 0, "eligibility": 0, "feature": 0, "malformed": 0}
        self.published = 0

    def feed_delta(self, topic: str, value: bytes, at_s: float) -> bytes | None:
        try:
            doc = json.loads(value)
            if topic == TOPIC_ITEMS:
                return self._embedding(int(doc["item_id"]), int(doc["created_at"]))
            if topic == TOPIC_ATTRIBUTES:
                return self._eligibility(int(doc["item_id"]), int(doc["ts"]), doc)
            if topic == TOPIC_ENGAGEMENT:
                return self._engagement(doc, at_s)
        except (ValueError, KeyError, TypeError):
            pass
        self.counts["malformed"] += 1  # the job's dead-letter path: no delta
        return None

    def _embedding(self, item_id: int, ts_ms: int) -> bytes:
        self.counts["embedding"] += 1
        self.published += 1
        vector = unit_vectors(np.random.default_rng(item_id), 1, self.layout.embedding_dim)[0]
        return self._encode(
            DeltaKind.EMBEDDING, item_id, REGION_EMBEDDING, embedding_version(ts_ms), ts_ms, vector
        )

    def _eligibility(self, item_id: int, ts_ms: int, attributes: dict[str, object]) -> bytes:
        self.counts["eligibility"] += 1
        words = self.encoder.words(attributes)
        return self._encode(
            DeltaKind.ELIGIBILITY, item_id, REGION_ELIGIBILITY, eligibility_version(ts_ms), ts_ms, words
        )

    def _engagement(self, doc: dict[str, object], at_s: float) -> bytes:
        item_id, region = doc["item_id"], self.regions[str(doc["action"])]
        if (
            not isinstance(item_id, int)
            or not isinstance(doc["ts"], int)
            or doc["ts"] < START_MS - 86_400_000
        ):
            raise ValueError("malformed engagement")
        count = self.running.get((item_id, region), 0) + 1
        self.running[item_id, region] = count
        self.counts["feature"] += 1
        # Versioned by the firing (arrival) time and the count, so each newer count wins.
        version = event_version(START_MS + int(at_s * 1000), count & MAX_SEQ)
        return self._encode(DeltaKind.FEATURE, item_id, region, version, int(doc["ts"]), np.float32([count]))

    def marker_delta(self, marker: int, seq: int, at_s: float) -> bytes:
        time_ms = START_MS + int(at_s * 1000)
        return self._encode(DeltaKind.FEATURE, MARKER_FIRST_ID + marker, self.probe_region,
                            event_version(time_ms), time_ms, np.float32([seq]))  # fmt: skip

    def new_item_probe(self, seq: int, at_s: float) -> bytes:
        time_ms = START_MS + int(at_s * 1000)
        vector = np.zeros(self.layout.embedding_dim, np.float32)
        vector[1] = NEW_ITEM_SCORE + seq * NEW_ITEM_STEP
        return self._encode(DeltaKind.EMBEDDING, NEW_PROBE_FIRST_ID + seq, REGION_EMBEDDING,
                            embedding_version(time_ms), time_ms, vector)  # fmt: skip

    def _encode(self, kind: DeltaKind, item_id: int, region: int, version: int, ts_ms: int,
                values: npt.NDArray[np.float32] | npt.NDArray[np.int64]) -> bytes:  # fmt: skip
        return encode_delta(Delta(kind, item_id, region, version, ts_ms, values), self.layout)


def catalog_state(feature_set: FeatureSet, items: int, spare_rows: int, seed: int = 0) -> ModelState:
    """``items`` live catalog items (the last ``MARKERS`` are the probe markers) and ``spare_rows`` free rows.

    Eligibility words come from a pool of 512 random attribute sets of the feed's kind; every cell is at
    a version older than the stream.
    """
    layout, rng = feature_set.layout(), np.random.default_rng(seed)
    rows = items + spare_rows
    occupied = np.zeros(rows, bool)
    occupied[:items] = True
    ids = np.zeros(rows, np.int64)
    ids[:items] = np.arange(items)
    ids[items - MARKERS : items] = MARKER_FIRST_ID + np.arange(MARKERS)
    embedding = np.zeros((rows, layout.embedding_dim), np.float32)
    embedding[:items] = unit_vectors(rng, items, layout.embedding_dim)
    embedding[items - MARKERS : items] = 0
    embedding[items - MARKERS : items, 0] = MARKER_SCORE
    features = np.zeros((rows, layout.num_features), np.float32)
    features[: items - MARKERS] = np.floor(rng.pareto(1.5, (items - MARKERS, layout.num_features)) * 3)
    eligibility = np.zeros((rows, layout.eligibility_words), np.int64)
    eligibility[:items] = _attribute_pool(feature_set, rng)[rng.integers(0, 512, items)]
    versions = np.full((rows, layout.num_regions), -1, np.int64)
    versions[:items] = event_version(START_MS - 86_400_000)
    return ModelState(layout.layout_hash, 0, ids, occupied, occupied.copy(), embedding, features, eligibility,
                      versions, np.zeros(0, np.int64), np.zeros(0, np.int64))  # fmt: skip


def _attribute_pool(feature_set: FeatureSet, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Eligibility words of 512 random attribute sets shaped like the feed's ``item.attributes``."""
    encoder = EligibilityEncoder.of(feature_set)
    media = ("text", "image", "video", "short_video")
    pool = [
        {
            "policy_status": str(rng.choice(["approved", "pending", "removed"], p=[0.9, 0.08, 0.02])),
            "language": str(rng.choice(LANGUAGES)),
            "region": [str(r) for r in rng.choice(REGIONS, int(rng.integers(1, 4)), replace=False)],
            "nsfw": bool(rng.random() < 0.03),
            "media_type": (m := str(rng.choice(media))),
            "duration_s": int(rng.integers(5, 600)) if "video" in m else 0,
        }
        for _ in range(512)
    ]
    return np.stack([encoder.words(attributes) for attributes in pool])


def probe_query(dim: int) -> npt.NDArray[np.float32]:
    """The query that returns every marker, then the newest visible new-item probes."""
    q = np.zeros(dim, np.float32)
    q[:2] = 1.0
    return q
