"""The event log backfill reads: the raw records of each source topic, kept in arrival order.

Layout of an event directory (``freshet backfill --events DIR``)::

    DIR/
      engagement/               one directory per source topic, named exactly like the topic
        part-000000.jsonl       JSON Lines: one raw record value per line, byte for byte as on the topic
        part-000001.parquet     or Parquet: a binary column ``value`` (the raw record value); optional
                                columns ``key`` (binary), ``ts_ms`` (int64), ``partition``, ``offset``
      items.published/
      item.attributes/

A topic's files are read in file-name order and each file's records in row order: that order is the
arrival order the stream saw (one partition's order, or the order a consumer of all partitions got
them). Both formats may be mixed in one directory. Records are kept raw, malformed ones included, so
backfill rejects and counts exactly what the stream job sent to the dead-letter topic. A raw value
holding a newline cannot be a JSON Lines row; such a log must be written as Parquet.

``write_event_log`` writes records (``freshet.feedgen.RawRecord``, or anything with ``topic``, ``key``,
``value`` and ``ts_ms``) in this layout; ``freshet feed`` writes the synthetic feed with it.
``EventLogAppender`` writes the same layout as records are produced (``freshet demo`` logs what it sends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from freshet.errors import FreshetError

Format = Literal["jsonl", "parquet"]
SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet"}
#: records handed to the parser at a time
CHUNK_RECORDS = 65_536
_READ_BYTES = 16 << 20

OnBytes = Callable[[int], None]
"""Called with the number of file bytes consumed since the last call (for a progress display)."""


class EventLogError(FreshetError):
    """An event directory or file that cannot be read as an event log; the message says which and why."""


class Record(Protocol):
    """What ``write_event_log`` needs of a record (``freshet.feedgen.RawRecord`` has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes: ...
    @property
    def ts_ms(self) -> int: ...


def topic_files(root: Path, topic: str) -> list[Path]:
    """The log files of ``topic`` under ``root``, in arrival order (empty if the topic has no directory)."""
    directory = Path(root) / topic
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in SUFFIXES)


def read_values(files: Iterable[Path], on_bytes: OnBytes | None = None) -> Iterator[list[bytes]]:
    """The raw record values of ``files`` in arrival order, in chunks of about ``CHUNK_RECORDS``."""
    for path in files:
        reader = _read_parquet if path.suffix == ".parquet" else _read_jsonl
        yield from reader(path, on_bytes or (lambda n: None))


def log_bytes(files: Iterable[Path]) -> int:
    """Total size of ``files`` (what ``read_values`` reports through ``on_bytes``)."""
    return sum(p.stat().st_size for p in files)


def _read_jsonl(path: Path, on_bytes: OnBytes) -> Iterator[list[bytes]]:
    rest = b""
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            for start in range(0, len(lines), CHUNK_RECORDS):
                yield lines[start : start + CHUNK_RECORDS]
            on_bytes(len(block))
    if rest:  # a last line without its newline is still a record
        yield [rest]


def _read_parquet(path: Path, on_bytes: OnBytes) -> Iterator[list[bytes]]:
    try:
        log = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise EventLogError(f"{path}: not a readable Parquet file: {exc}") from exc
    schema = log.schema_arrow
    kind = schema.field("value").type if "value" in schema.names else None
    if kind is None or not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise EventLogError(f"{path}: needs a binary column 'value' holding each raw record value")
    size, rows = path.stat().st_size, max(log.metadata.num_rows, 1)
    for batch in log.iter_batches(batch_size=CHUNK_RECORDS, columns=["value"]):
        values = batch.column(0).to_pylist()
        if None in values:
            raise EventLogError(f"{path}: column 'value' has nulls; every row must be one raw record")
        yield values
        on_bytes(size * batch.num_rows // rows)


# ---------------------------------------------------------------- writing


def write_event_log(
    records: Iterable[Record], root: Path, fmt: Format = "jsonl", *, records_per_file: int = 1_000_000
) -> dict[str, int]:
    """Append ``records`` to the log under ``root`` (after any files already there); returns counts per topic.

    Each topic gets files of at most ``records_per_file`` records, named so that they sort after the
    topic's existing files.
    """
    writers: dict[str, _TopicWriter] = {}
    try:
        for record in records:
            if record.topic not in writers:
                writers[record.topic] = _TopicWriter(Path(root), record.topic, fmt, records_per_file)
            writers[record.topic].add(record)
    finally:
        for writer in writers.values():
            writer.flush()
    return {topic: writer.count for topic, writer in writers.items()}


class _TopicWriter:
    """Buffers one topic's records and flushes them as numbered files."""

    def __init__(self, root: Path, topic: str, fmt: Format, records_per_file: int) -> None:
        self.directory = root / topic
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fmt, self.per_file = fmt, records_per_file
        self.next_part = _next_part(self.directory)
        self.count = 0
        self._rows: list[Record] = []

    def add(self, record: Record) -> None:
        if self.fmt == "jsonl" and b"\n" in record.value:
            raise EventLogError(f"a {record.topic} record value holds a newline; write this log as parquet")
        self._rows.append(record)
        self.count += 1
        if len(self._rows) >= self.per_file:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        path = self.directory / f"part-{self.next_part:06d}.{self.fmt}"
        if self.fmt == "jsonl":
            path.write_bytes(b"".join(r.value + b"\n" for r in self._rows))
        else:
            columns = {
                "key": pa.array([r.key for r in self._rows], pa.binary()),
                "value": pa.array([r.value for r in self._rows], pa.binary()),
                "ts_ms": pa.array([r.ts_ms for r in self._rows], pa.int64()),
            }
            pq.write_table(pa.table(columns), path, row_group_size=CHUNK_RECORDS)
        self.next_part += 1
        self._rows = []


class EventLogAppender:
    """Appends records to a JSON Lines log as they are sent, one new file per topic, in the order given.

    Call ``append`` with each batch right after handing it to the producer (in the same order), so the
    log's order is the topic's; ``close`` flushes. A file starts after the topic's existing ones.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.counts: dict[str, int] = {}
        self._files: dict[str, BinaryIO] = {}

    def append(self, records: Iterable[Record]) -> None:
        """Write ``records`` (one line each) and flush them to the operating system."""
        touched = set()
        for record in records:
            if b"\n" in record.value:
                raise EventLogError(
                    f"a {record.topic} record value holds a newline; it cannot be a JSON Lines row"
                )
            self._file(record.topic).write(record.value + b"\n")
            self.counts[record.topic] = self.counts.get(record.topic, 0) + 1
            touched.add(record.topic)
        for topic in touched:
            self._files[topic].flush()

    def close(self) -> None:
        """Flush and close every file."""
        for f in self._files.values():
            f.close()
        self._files.clear()

    def _file(self, topic: str) -> BinaryIO:
        if topic not in self._files:
            directory = self.root / topic
            directory.mkdir(parents=True, exist_ok=True)
            self._files[topic] = open(directory / f"part-{_next_part(directory):06d}.jsonl", "ab")  # noqa: SIM115
        return self._files[topic]


def _next_part(directory: Path) -> int:
    """One past the highest ``part-N`` number in ``directory``, so new files sort after the old ones."""
    numbers = [int(p.stem[5:]) for p in directory.glob("part-*") if p.stem[5:].isdigit()]
    return max(numbers, default=-1) + 1
