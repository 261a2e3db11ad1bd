"""Backfill straight from the raw Kafka topics: ``--events kafka://HOST:PORT[,HOST:PORT]``.

The core imports no Kafka client. It reaches the adapter that reads the topics, ``flink_jobs.raw_topics``
(the raw topics are the job's inputs), by module name, as ``freshet.cli`` reaches every adapter, and has
it write a bounded, read_committed read of every declared source topic into an event log directory,
which backfill then reads like any other (``freshet.offline.eventlog``).
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshet.errors import FreshetError
from freshet.spec import FeatureSet

SCHEME = "kafka://"
ADAPTER = "flink_jobs.raw_topics"
#: what a summary says about the cut a topic read makes
BOUNDED_NOTE = "each partition read up to its high watermark when the read started; records produced later are not included"


class TopicsError(FreshetError):
    """A ``kafka://`` events address that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class KafkaEvents:
    """``--events kafka://...``: the brokers to read the raw topics from."""

    bootstrap: str


def parse_events(text: str) -> Path | KafkaEvents:
    """An event-log directory, or ``kafka://HOST:PORT[,HOST:PORT]``.

    >>> parse_events("kafka://127.0.0.1:9092,b:9093"), parse_events("events/")
    (KafkaEvents(bootstrap='127.0.0.1:9092,b:9093'), PosixPath('events'))
    """
    if not text.startswith(SCHEME):
        return Path(text)
    servers = [s for s in text[len(SCHEME) :].split(",") if s]
    bad = [s for s in servers if not s.rpartition(":")[2].isdigit() or not s.rpartition(":")[0]]
    if not servers or bad:
        raise TopicsError(f"{text!r}: want kafka://HOST:PORT[,HOST:PORT]")
    return KafkaEvents(",".join(servers))


def source_topics(feature_set: FeatureSet, topic_map: Mapping[str, str]) -> dict[str, str]:
    """Declared topic → topic to read, for every declared source (``topic_map``: ``--topic``, as parsed by
    ``freshet.topic_map``)."""
    declared = sorted({source.topic for source in feature_set.sources})
    return {topic: topic_map.get(topic, topic) for topic in declared}


def export(events: KafkaEvents, topics: Mapping[str, str], out: Path, **options: Any) -> dict[str, Any]:
    """Write the bounded read of ``topics`` under ``out`` with the adapter; returns what each read covered."""
    adapter = _adapter()
    cuts: dict[str, Any] = adapter.export_raw_topics(events.bootstrap, topics, out, **options)
    return cuts


@contextmanager
def exported(
    events: KafkaEvents, topics: Mapping[str, str], **options: Any
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A temporary event log of ``topics`` (removed on exit) and what each read covered."""
    with tempfile.TemporaryDirectory(prefix="freshet-topics-") as tmp:
        yield Path(tmp), export(events, topics, Path(tmp), **options)


def _adapter() -> Any:
    try:
        return importlib.import_module(ADAPTER)
    except ModuleNotFoundError as exc:
        if exc.name not in (ADAPTER, ADAPTER.split(".")[0], "kafka"):
            raise
        raise TopicsError(f"reading Kafka topics needs the {ADAPTER} adapter and kafka-python ({exc}); "
                          "install freshet with its adapters (`./dev setup`), or pass an event-log directory") from exc  # fmt: skip
