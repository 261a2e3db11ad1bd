"""Generated raw streams for the delta job's tests, and the oracle the job's output is held to.

The oracle of the windowed features is ``freshet.replay.StreamReplay``, feature by feature over the events its
filter takes, with the watermark each event arrived under; it shares no code with ``freshet.job_logic``
(which groups features per item, routes events through filters and encodes deltas). Eligibility and
embedding oracles are the encoder and the item tower called directly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshet.deltas import DeltaKind, decode_batch
from freshet.events import Event
from freshet.job_logic import EngagementLogic, States
from freshet.layout import TensorLayout
from freshet.replay import StreamReplay
from freshet.spec import FeatureSet, load_feature_set
from freshet.towers import TowerConfig, TwoTower
from freshet.windows import Dropped, Fire, Late, WindowedAggregate, version_for

FEATURE_DEFS = Path(__file__).resolve().parent.parent / "feature_defs"
T0_MS = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000  # a UTC midnight: windows of every size start here
ACTIONS = ("like", "share", "comment", "view")

FeatureRow = tuple[int, int, int, int, float]
"""(item id, region, version, event time ms, float32 value) of one FEATURE delta."""


def social_feed() -> FeatureSet:
    return load_feature_set(FEATURE_DEFS)


def engagement_docs(
    rng: random.Random,
    items: Sequence[int],
    n: int,
    *,
    start_ms: int = T0_MS,
    step_ms: int = 20_000,
    disorder_ms: int = 0,
    late_every: int = 0,
    late_by_ms: tuple[int, int] = (0, 0),
) -> list[dict[str, Any]]:
    """``n`` engagement events in arrival order, event time advancing ``step_ms`` on average.

    Each is at most ``disorder_ms`` behind the previous greatest time; with ``late_every``, every
    ``late_every``-th event instead lags by a time drawn from ``late_by_ms`` (late within or beyond
    allowed lateness, by how far).
    """
    docs, clock = [], start_ms
    for i in range(n):
        clock += rng.randint(0, 2 * step_ms)
        ts = clock - rng.randint(0, disorder_ms)
        if late_every and i % late_every == late_every - 1:
            ts = clock - rng.randint(*late_by_ms)
        action = rng.choice(ACTIONS)
        doc = {"item_id": rng.choice(items), "ts": ts, "user_id": rng.randint(1, 40), "action": action,
               "dwell_ms": rng.choice([0, 250, 1_500.5, rng.randint(1, 90_000)])}  # fmt: skip
        docs.append(doc)
    return docs


def item_docs(items: Sequence[int], *, start_ms: int = T0_MS) -> list[dict[str, Any]]:
    topics = ("cats", "dogs", "cooking at home", "football", "jazz")
    return [
        {"item_id": item, "created_at": start_ms + 1_000 * i, "author_id": item % 7,
         "title": f"title {item}", "text": f"text about {topics[item % 5]}", "topic": topics[item % 5]}
        for i, item in enumerate(items)
    ]  # fmt: skip


def attribute_docs(
    rng: random.Random, items: Sequence[int], *, start_ms: int = T0_MS
) -> list[dict[str, Any]]:
    """Two full attribute sets per item at different times, sent newest first for half the items."""
    docs = []
    for item in items:
        pair = [_attributes(rng, item, start_ms + rng.randint(0, 3_600_000)) for _ in range(2)]
        docs.extend(reversed(pair) if item % 2 else pair)
    return docs


def _attributes(rng: random.Random, item: int, ts: int) -> dict[str, Any]:
    media = rng.choice(["text", "image", "video", "short_video"])
    return {"item_id": item, "ts": ts, "policy_status": rng.choice(["approved", "pending", "removed"]),
            "language": rng.choice(["en", "pt", "de"]), "region": rng.sample(["PT", "BR", "US", "DE"], 2),
            "nsfw": rng.random() < 0.2, "media_type": media, "duration_s": rng.choice([5, 59.5, 60, 600])}  # fmt: skip


def two_tower(seed: int = 0, hidden: int = 16) -> TwoTower:
    """A small untrained two-tower model for the social-feed layout (deterministic per seed)."""
    feature_set = social_feed()
    torch.manual_seed(seed)
    dim = feature_set.layout().embedding_dim
    return TwoTower(
        TowerConfig(("user_id",), dim, buckets=256, hidden=hidden),
        TowerConfig(tuple(feature_set.embedding.input_fields), dim, buckets=256, hidden=hidden),
    )


def encode_docs(docs: Iterable[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(d).encode() for d in docs]


def oracle_feature_rows(
    feature_set: FeatureSet,
    events: Sequence[Event],
    watermarks: Sequence[int],
    end_watermark_ms: int | None,
) -> tuple[set[FeatureRow], dict[str, int], dict[str, int]]:
    """FEATURE deltas, too-late events sent to the side output and dropped, by feature, from ``replay``.

    ``watermarks[i]`` is the watermark after event ``i`` of the whole source: each feature's replay sees
    every watermark and the events its filter takes.
    """
    layout = feature_set.layout()
    rows: set[FeatureRow] = set()
    late: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for feature in feature_set.features:
        replay: StreamReplay[int] = StreamReplay(WindowedAggregate.from_feature(feature))
        outputs = []
        for event, watermark in zip(events, watermarks, strict=True):
            if feature.filter is None or feature.filter.matches(event.fields):
                value = 1 if feature.field is None else event.fields[feature.field]
                outputs += replay.on_event(event.ts_ms, event.item_id, value)
            outputs += replay.advance(watermark)
        if end_watermark_ms is not None:
            outputs += replay.advance(end_watermark_ms)
        region = layout.feature_region(feature.name)
        for item, out in outputs:
            if isinstance(out, Fire):
                rows.add((item, region, version_for(out), out.event_time_ms, float(np.float32(out.value))))
            elif isinstance(out, Late):
                late[feature.name] = late.get(feature.name, 0) + 1
            elif isinstance(out, Dropped):
                dropped[feature.name] = dropped.get(feature.name, 0) + 1
    return rows, late, dropped


class LogicRun:
    """``EngagementLogic`` over many items, with event-time timers as Flink keeps them."""

    def __init__(self, logic: EngagementLogic) -> None:
        self.logic = logic
        self.states: dict[int, States] = {}
        self.timers: dict[int, set[int]] = {}
        self.deltas: list[bytes] = []
        self.lates: list[tuple[str, bytes]] = []
        self.dropped: dict[str, int] = {}

    def event(self, event: Event, watermark_ms: int) -> None:
        step = self.logic.on_event(self.states.get(event.item_id, {}), event, watermark_ms)
        self._keep(event.item_id, step)

    def watermark(self, watermark_ms: int) -> None:
        due = [item for item, times in self.timers.items() if any(t <= watermark_ms for t in times)]
        for item in due:
            self.timers[item] = {t for t in self.timers[item] if t > watermark_ms}
            self._keep(item, self.logic.on_watermark(self.states.get(item, {}), watermark_ms, item_id=item))

    def _keep(self, item: int, step: Any) -> None:
        if step.states:
            self.states[item] = step.states
        else:
            self.states.pop(item, None)
        self.timers.setdefault(item, set()).update(self.logic.due_times_ms(step.states))
        self.deltas += step.deltas
        self.lates += step.lates
        for name, count in step.dropped.items():
            self.dropped[name] = self.dropped.get(name, 0) + count


def feature_rows(values: Iterable[bytes], layout: TensorLayout) -> set[FeatureRow]:
    """Distinct FEATURE deltas among encoded deltas (a re-delivered delta is the same row)."""
    batch = decode_batch(list(values), layout)
    assert not batch.rejected, batch.rejected
    part = batch.kind_slice(DeltaKind.FEATURE)
    return {
        (int(i), int(r), int(v), int(t), float(x))
        for i, r, v, t, x in zip(batch.item_id[part], batch.region[part], batch.version[part],
                                 batch.event_time_ms[part], batch.feature_values, strict=True)
    }  # fmt: skip
