"""A synthetic social feed: new posts, heavy-tailed engagement bursts, attribute changes, and bad input.

Deterministic for a seed, with event time passed in (``start_ms``), so the demo, the tests, the
benchmarks and backfill all see the same stream. Shaped like what the feature definitions in
``feature_defs/`` expect:

* ``items.published``: ``{item_id, created_at, author_id, title, text, topic}``;
* ``item.attributes``: the item's **full** attribute set at ``ts`` (``policy_status``, ``language``,
  ``region``, ``nsfw``, ``media_type``, ``duration_s``): one when the item is published, and later
  changes (a policy review, a region added) as complete new sets;
* ``engagement``: ``{item_id, ts, user_id, action, dwell_ms}``, items chosen by a Zipf law over recent
  posts (a few go viral), users by their topic interests, with out-of-order jitter, a share of late
  events, and a share of malformed records (broken JSON, wrong types, absurd timestamps).

Users have interests; they engage more with posts of their topics. ``training_pairs`` yields
(user, item) interactions of the same law, to train the two-tower model the demo publishes.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

TOPICS = ("cats", "football", "cooking", "travel", "music", "science", "fashion", "gaming")
WORDS = {
    "cats": "kitten purr whiskers nap box",
    "football": "goal match striker derby penalty",
    "cooking": "recipe pasta oven spicy bake",
    "travel": "beach flight hostel mountains backpack",
    "music": "concert guitar album festival vinyl",
    "science": "physics telescope lab quantum genome",
    "fashion": "runway denim sneakers vintage style",
    "gaming": "speedrun console quest boss pixel",
}
REGIONS = ("PT", "ES", "FR", "DE", "US", "BR", "IN", "JP")
LANGUAGES = ("pt", "es", "fr", "de", "en", "ja")
ACTIONS = (("view", 0.70), ("like", 0.18), ("comment", 0.07), ("share", 0.05))

TOPIC_ITEMS, TOPIC_ATTRIBUTES, TOPIC_ENGAGEMENT = "items.published", "item.attributes", "engagement"


@dataclass(frozen=True)
class FeedConfig:
    """Rates and shares of the generated stream. Rates are per second of event time."""

    seed: int = 7
    users: int = 5_000
    posts_per_s: float = 20.0
    engagements_per_s: float = 400.0
    attribute_changes_per_s: float = 2.0
    zipf_s: float = 1.1
    recent_posts: int = 2_000
    jitter_ms: int = 2_000
    late_share: float = 0.005
    late_by_ms: int = 120_000
    malformed_share: float = 0.002
    first_item_id: int = 1_000_000


@dataclass(frozen=True)
class RawRecord:
    """One record for a raw topic: the key is the item id (ASCII decimal), the value is the JSON bytes."""

    topic: str
    key: bytes
    value: bytes
    ts_ms: int


@dataclass
class FeedGenerator:
    """Generates the feed second by second of event time; ``records(seconds)`` iterates them."""

    config: FeedConfig
    start_ms: int
    _rng: random.Random = field(init=False)
    _posts: list[tuple[int, str]] = field(init=False, default_factory=list)
    _next_id: int = field(init=False)
    _interests: list[tuple[str, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)
        self._next_id = self.config.first_item_id
        self._interests = [tuple(self._rng.sample(TOPICS, 2)) for _ in range(self.config.users)]
        self._zipf = list(itertools.accumulate(_zipf_weights(self.config.recent_posts, self.config.zipf_s)))

    def user(self, user_id: int) -> dict[str, object]:
        """The query-side record of a user: what the query tower reads."""
        return {"user_id": user_id, "interests": list(self._interests[user_id % self.config.users])}

    def records(self, seconds: int, *, from_second: int = 0) -> Iterator[RawRecord]:
        """All records of event-time seconds ``[from_second, from_second + seconds)``, in arrival order."""
        for second in range(from_second, from_second + seconds):
            yield from self.second(second)

    def second(self, second: int) -> list[RawRecord]:
        """The records whose arrival falls in one second of the stream, shuffled as a broker would mix them."""
        base = self.start_ms + second * 1000
        made: list[RawRecord | None] = [
            r for _ in range(self._count(self.config.posts_per_s)) for r in self._publish(base)
        ]
        made += [self._engagement(base) for _ in range(self._count(self.config.engagements_per_s))]
        made += [
            self._attribute_change(base) for _ in range(self._count(self.config.attribute_changes_per_s))
        ]
        out = [r for r in made if r is not None]
        self._rng.shuffle(out)
        return out

    def _count(self, rate: float) -> int:
        whole = int(rate)
        return whole + (1 if self._rng.random() < rate - whole else 0)

    def _ts(self, base: int) -> int:
        ts = base + self._rng.randrange(1000) - self._rng.randrange(self.config.jitter_ms + 1)
        if self._rng.random() < self.config.late_share:
            ts -= self.config.late_by_ms
        return ts

    def _publish(self, base: int) -> list[RawRecord]:
        item_id, topic = self._next_id, self._rng.choice(TOPICS)
        self._next_id += 1
        self._posts.append((item_id, topic))
        del self._posts[: -self.config.recent_posts]
        ts = base + self._rng.randrange(1000)
        words = WORDS[topic].split()
        doc = {
            "item_id": item_id,
            "created_at": ts,
            "author_id": self._rng.randrange(1, 500),
            "title": " ".join(self._rng.sample(words, 2)),
            "text": " ".join(self._rng.choices(words, k=6)),
            "topic": topic,
        }
        return [
            _record(TOPIC_ITEMS, item_id, doc, ts),
            _record(TOPIC_ATTRIBUTES, item_id, self._attributes(item_id, ts), ts),
        ]

    def _attributes(self, item_id: int, ts: int) -> dict[str, object]:
        rng = self._rng
        media = rng.choice(("text", "image", "video", "short_video"))
        return {
            "item_id": item_id,
            "ts": ts,
            "policy_status": rng.choices(("approved", "pending", "removed"), (0.9, 0.08, 0.02))[0],
            "language": rng.choice(LANGUAGES),
            "region": rng.sample(REGIONS, rng.randint(1, 3)),
            "nsfw": rng.random() < 0.03,
            "media_type": media,
            "duration_s": rng.randint(5, 600) if "video" in media else 0,
        }

    def _engagement(self, base: int) -> RawRecord | None:
        if not self._posts:
            return None
        if self._rng.random() < self.config.malformed_share:
            return self._malformed(base)
        user_id = self._rng.randrange(self.config.users)
        item_id = self._pick_item(user_id)
        action = self._rng.choices([a for a, _ in ACTIONS], [w for _, w in ACTIONS])[0]
        ts = self._ts(base)
        doc = {
            "item_id": item_id,
            "ts": ts,
            "user_id": user_id,
            "action": action,
            "dwell_ms": round(self._rng.lognormvariate(8.0, 1.0), 1),
        }
        return _record(TOPIC_ENGAGEMENT, item_id, doc, ts)

    def _pick_item(self, user_id: int) -> int:
        """Zipf over recency (newest is rank 0), then prefer the user's topics among a few candidates."""
        ranks = self._rng.choices(range(len(self._zipf)), cum_weights=self._zipf, k=4)
        candidates = [self._posts[-1 - r % len(self._posts)] for r in ranks]
        liked = [c for c in candidates if c[1] in self._interests[user_id]]
        return (liked or candidates)[0][0]

    def _attribute_change(self, base: int) -> RawRecord | None:
        if not self._posts:
            return None
        item_id = self._rng.choice(self._posts)[0]
        ts = self._ts(base)
        return _record(TOPIC_ATTRIBUTES, item_id, self._attributes(item_id, ts), ts)

    def _malformed(self, base: int) -> RawRecord:
        kind = self._rng.randrange(3)
        item_id = self._posts[-1][0]
        if kind == 0:
            value = b'{"item_id": ' + str(item_id).encode() + b', "ts": '
        elif kind == 1:
            value = json.dumps(
                {"item_id": str(item_id), "ts": base, "user_id": 1, "action": "like", "dwell_ms": 1}
            ).encode()
        else:
            value = json.dumps(
                {"item_id": item_id, "ts": 12345, "user_id": 1, "action": "like", "dwell_ms": 1}
            ).encode()
        return RawRecord(TOPIC_ENGAGEMENT, str(item_id).encode(), value, base)

    def training_pairs(self, n: int) -> list[tuple[dict[str, object], dict[str, object]]]:
        """(user record, item record) interactions: users engage with posts of their interests."""
        rng = random.Random(self.config.seed + 1)
        pairs = []
        for _ in range(n):
            user_id = rng.randrange(self.config.users)
            topic = rng.choice(self._interests[user_id])
            words = WORDS[topic].split()
            item = {
                "title": " ".join(rng.sample(words, 2)),
                "text": " ".join(rng.choices(words, k=6)),
                "topic": topic,
                "author_id": rng.randrange(1, 500),
            }
            pairs.append((self.user(user_id), item))
        return pairs


def _record(topic: str, item_id: int, doc: dict[str, object], ts: int) -> RawRecord:
    return RawRecord(topic, str(item_id).encode(), json.dumps(doc, separators=(",", ":")).encode(), ts)


def _zipf_weights(n: int, s: float) -> list[float]:
    """Weights of ranks ``0..n-1`` under a Zipf law with exponent ``s``.

    >>> w = _zipf_weights(3, 1.0); [round(x, 3) for x in w]
    [1.0, 0.5, 0.333]
    """
    return [1.0 / (rank + 1) ** s for rank in range(n)]
