"""One source's logged records, parsed as the stream job parses them, up to where its watermark passes ``until``.

Each record goes through the job's ``EventParser`` for the source, so backfill accepts and rejects exactly
what the job does (rejections are counted by reason code). Every event is paired with
the watermark it arrived under: the source's bounded-out-of-orderness watermark after every event before
it (``freshet.watermarks``), ``NO_WATERMARK`` for the first.

**The cut.** Backfill computes the state the stream had when its watermark reached ``until``. An event
that arrives once the watermark is at ``until`` or past it belongs to the future of that state (a late
event among them could still re-fire an old window), so reading stops at the first such event. The
events before it may have times after ``until`` (up to the out-of-orderness bound); windowed features
never fire with them by ``until``, and the stateless regions skip them (``ts_ms > until``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from freshet.events import Event
from freshet.job_logic import EventParser
from freshet.spec import FeatureSet
from freshet.watermarks import bounded_out_of_orderness
from freshet.windows import NO_WATERMARK

Arrived = tuple[Event, int]
"""An event and the watermark it arrived under."""


@dataclass
class SourceStats:
    """What reading one source's log found."""

    source: str
    topic: str
    records: int = 0
    events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    #: whether the log goes on past the cut (records after it were not read)
    cut: bool = False
    #: the source's watermark after the last event read
    watermark_ms: int = NO_WATERMARK

    def to_dict(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "records": self.records,
            "events": self.events,
            "rejected": dict(sorted(self.rejected.items())),
            "cut": self.cut,
            "watermark_ms": None if self.watermark_ms == NO_WATERMARK else self.watermark_ms,
        }


class SourceReader:
    """Parses one declared source's raw records in arrival order and pairs each event with its watermark."""

    def __init__(self, feature_set: FeatureSet, source: str, until_ms: int | None) -> None:
        declared = feature_set.source(source)
        self.stats = SourceStats(source, declared.topic)
        self._parse_one = EventParser.of(feature_set, source)
        self._delay_ms = declared.watermark.max_out_of_orderness_ms
        self._until_ms = until_ms
        self._max_ts: int | None = None

    def events(self, chunks: Iterable[list[bytes]]) -> Iterator[list[Arrived]]:
        """The events of ``chunks`` (raw values) with the watermark each arrived under, chunk by chunk.

        Stops at the cut: the first event arriving under a watermark at or past ``until``.
        """
        for values in chunks:
            arrived = self._parse(values)
            if arrived:
                yield arrived
            if self.stats.cut:
                return

    def _parse(self, values: list[bytes]) -> list[Arrived]:
        stats, out = self.stats, []
        for raw in values:
            parsed = self._parse_one(raw)
            if not isinstance(parsed, Event):
                stats.records += 1
                stats.rejected[parsed.reason_code] += 1
                continue
            watermark = bounded_out_of_orderness(self._max_ts, self._delay_ms)
            if self._until_ms is not None and watermark >= self._until_ms:
                stats.cut = True
                break
            stats.records += 1
            stats.events += 1
            out.append((parsed, watermark))
            self._max_ts = parsed.ts_ms if self._max_ts is None else max(self._max_ts, parsed.ts_ms)
        stats.watermark_ms = bounded_out_of_orderness(self._max_ts, self._delay_ms)
        return out
