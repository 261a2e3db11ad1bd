"""Model snapshots: consistent cuts of an ``IndexModel`` on disk, published atomically (DESIGN contract 5).

A snapshot is a directory ``snapshot-<seq>`` holding one Arrow IPC file per array of ``ModelState`` (each a
single flat column, memory-mappable; its shape follows from the manifest's row counts and the layout) and
``manifest.json``: format version, layout hash, model version, the per-partition delta offsets it includes
(the next offset to read), topic, aligned Flink checkpoint, row counts, the model digest at the cut, each
file's sha256 and size, creation time, and a checksum of the manifest itself.

Publishing: write everything into a temporary directory under the root (data files first, the manifest
last), fsync each file and the directory, rename it to its final name, fsync the root. A directory without a
valid manifest is never a snapshot. Loading checks the manifest checksum, format, layout, every file's size
and sha256 and every array's shape before it builds a new model; it never touches a model the caller has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from freshet.errors import FreshetError
from freshet.files import fsync_path, sha256_file, write_synced
from freshet.layout import TensorLayout
from freshet.model import IndexModel
from freshet.model_state import ARRAY_NAMES, ModelState, state_digest
from freshet.model_tensors import NUMPY_DTYPES, ModelStateError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREFIX = "snapshot-"
_NAME = re.compile(r"^snapshot-(\d+)$")


class SnapshotError(FreshetError):
    """A snapshot is missing, incomplete, altered or of another layout; the message names the path and why."""


@dataclass(frozen=True)
class Manifest:
    """What a snapshot holds and how to check it; ``offsets`` maps partition -> next delta offset to read."""

    format_version: int
    created_at: str
    layout_hash: str
    model_version: int
    topic: str
    flink_checkpoint: str | None
    offsets: dict[int, int]
    rows: int  # stored rows (the model's high-water mark)
    row_count: int  # retrievable items
    tombstones: int
    digest: str  # IndexModel.digest() at the cut
    files: dict[str, dict[str, Any]]  # file name -> {"sha256": hex, "bytes": size}

    def to_json(self) -> str:
        body = asdict(self)
        body["offsets"] = {str(p): o for p, o in sorted(self.offsets.items())}
        return json.dumps({**body, "checksum": _checksum(body)}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse and check a manifest; raises ``ValueError`` saying what is wrong."""
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        if body.pop("checksum", None) != _checksum(body):
            raise ValueError("checksum mismatch: the manifest was altered or truncated")
        if body.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"format version {body.get('format_version')!r}, this freshet reads {FORMAT_VERSION}"
            )
        body["offsets"] = {int(p): int(o) for p, o in body["offsets"].items()}
        return cls(**body)


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------- writing


def write_snapshot(
    model: IndexModel | ModelState,
    root: Path,
    offsets: Mapping[int, int],
    *,
    topic: str = "",
    flink_checkpoint: str | None = None,
) -> Path:
    """Publish a snapshot of ``model`` under ``root`` and return its directory.

    ``offsets`` must be the delta positions right after the last batch the state includes: call it from the
    apply loop, or pass a ``ModelState`` that was exported (``model.export_state()``) inside
    ``model.paused()`` together with reading the offsets, then write it without holding up apply.
    """
    state = model if isinstance(model, ModelState) else model.export_state()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-snapshot-", dir=root))
    try:
        files = _write_arrays(tmp, state)
        manifest = _manifest_of(state, offsets, topic, flink_checkpoint, files)
        write_synced(tmp / MANIFEST, manifest.to_json().encode())
        fsync_path(tmp)
        return _publish(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _manifest_of(
    state: ModelState,
    offsets: Mapping[int, int],
    topic: str,
    flink_checkpoint: str | None,
    files: dict[str, dict[str, Any]],
) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        layout_hash=state.layout_hash,
        model_version=state.model_version,
        topic=topic,
        flink_checkpoint=flink_checkpoint,
        offsets={int(p): int(o) for p, o in offsets.items()},
        rows=state.rows,
        row_count=int(state.valid.sum()),
        tombstones=int(state.tomb_ids.shape[0]),
        digest=state_digest(state),
        files=files,
    )


def _write_arrays(directory: Path, state: ModelState) -> dict[str, dict[str, Any]]:
    """One Arrow IPC file per array; returns each file's sha256 and size."""
    files = {}
    for name in ARRAY_NAMES:
        path = directory / f"{name}.arrow"
        flat = pa.array(np.ascontiguousarray(getattr(state, name)).reshape(-1))
        with (
            pa.OSFile(str(path), "wb") as sink,
            pa.ipc.new_file(sink, pa.schema([("values", flat.type)])) as out,
        ):
            out.write_batch(pa.record_batch([flat], names=["values"]))
        fsync_path(path)
        files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def _publish(tmp: Path, root: Path) -> Path:
    """Rename ``tmp`` to the next free ``snapshot-<seq>`` (retrying if a concurrent writer took it)."""
    for _ in range(100):
        final = root / f"{PREFIX}{_next_seq(root):010d}"
        try:
            os.rename(tmp, final)
        except OSError:
            if final.exists():
                continue
            raise
        fsync_path(root)
        return final
    raise SnapshotError(f"{root}: could not find a free snapshot name")


def _next_seq(root: Path) -> int:
    seqs = [int(m.group(1)) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return max(seqs, default=0) + 1


# ---------------------------------------------------------------- reading


def load_snapshot(
    path: Path, layout: TensorLayout, *, verify_digest: bool = False
) -> tuple[IndexModel, Manifest]:
    """Check the snapshot at ``path`` against ``layout`` and build a new model from it.

    Raises ``SnapshotError`` naming the path and the problem. ``verify_digest`` also recomputes the model
    digest and compares it with the manifest's (the sha256s already prove the bytes; this proves the cut).
    """
    manifest = _read_manifest(path)
    if manifest.layout_hash != layout.layout_hash:
        raise SnapshotError(f"{path}: snapshot has layout {manifest.layout_hash}, this replica's layout is "
                            f"{layout.layout_hash}; load a snapshot written with the same feature_defs")  # fmt: skip
    _verify_files(path, manifest)
    try:
        model = IndexModel.from_state(layout, _read_state(path, manifest, layout), copy=False)
    except ModelStateError as exc:
        raise SnapshotError(f"{path}: {exc}") from exc
    if verify_digest and model.digest() != manifest.digest:
        raise SnapshotError(f"{path}: the loaded model's digest differs from the manifest's")
    return model, manifest


def _read_manifest(path: Path) -> Manifest:
    try:
        text = (path / MANIFEST).read_text()
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no {MANIFEST} (an incomplete write, or not a snapshot)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{path}: cannot read {MANIFEST}: {exc}") from exc
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"{path}/{MANIFEST}: {exc}") from exc


def _verify_files(path: Path, manifest: Manifest) -> None:
    expected = {f"{name}.arrow" for name in ARRAY_NAMES}
    if set(manifest.files) != expected:
        raise SnapshotError(f"{path}: manifest lists {sorted(manifest.files)}, expected {sorted(expected)}")
    for name, entry in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise SnapshotError(f"{file}: missing")
        if file.stat().st_size != entry["bytes"]:
            raise SnapshotError(
                f"{file}: {file.stat().st_size} bytes, the manifest says {entry['bytes']} (truncated?)"
            )
    with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib releases the GIL: hash files on both cores
        digests = dict(
            zip(manifest.files, pool.map(sha256_file, [path / n for n in manifest.files]), strict=True)
        )
    for name, entry in manifest.files.items():
        if digests[name] != entry["sha256"]:
            raise SnapshotError(f"{path / name}: sha256 mismatch, the file was altered or corrupted")


def _read_state(path: Path, manifest: Manifest, layout: TensorLayout) -> ModelState:
    n, t = manifest.rows, manifest.tombstones
    shapes = {
        "item_embedding": ((n, layout.embedding_dim), NUMPY_DTYPES[layout.embedding_dtype]),
        "features": ((n, layout.num_features), np.dtype(np.float32)),
        "eligibility": ((n, layout.eligibility_words), np.dtype(np.int64)),
        "versions": ((n, layout.num_regions), np.dtype(np.int64)),
        "occupied": ((n,), np.dtype(np.bool_)),
        "valid": ((n,), np.dtype(np.bool_)),
        "item_ids": ((n,), np.dtype(np.int64)),
        "tomb_ids": ((t,), np.dtype(np.int64)),
        "tomb_versions": ((t,), np.dtype(np.int64)),
    }
    arrays = {name: _read_array(path / f"{name}.arrow", *shapes[name]) for name in ARRAY_NAMES}
    return ModelState(manifest.layout_hash, manifest.model_version, **arrays)


def _read_array(file: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """The file's flat column as a private copy-on-write mapping of the file (a page is copied only when apply
    first writes it, so a load reads no more than the checksums did); bools, bit-packed by Arrow, are copied."""
    try:
        source = pa.memory_map(str(file))
        base = source.read_buffer(source.size()).address
        source.seek(0)
        column = pa.ipc.open_file(source).read_all().column("values")
        flat = column.chunk(0) if column.num_chunks == 1 else pa.concat_arrays(column.chunks)
    except (pa.ArrowException, KeyError, OSError, ValueError) as exc:
        raise SnapshotError(f"{file}: not a readable Arrow IPC file: {exc}") from exc
    values_dtype = np.dtype(flat.type.to_pandas_dtype())
    if values_dtype != dtype or len(flat) != int(np.prod(shape)) or flat.null_count:
        raise SnapshotError(f"{file}: holds {flat.type}[{len(flat)}], the layout wants {dtype}{list(shape)}")
    if dtype == np.bool_ or len(flat) == 0:
        return np.array(flat.to_numpy(zero_copy_only=False), dtype=dtype).reshape(shape)
    offset = flat.buffers()[1].address - base + flat.offset * dtype.itemsize
    return np.memmap(file, dtype=dtype, mode="c", offset=offset, shape=shape)


# ---------------------------------------------------------------- choosing one


def list_snapshots(root: Path) -> list[Path]:
    """Published snapshot directories under ``root``, newest first (temporary directories are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def newest_valid_snapshot(root: Path, layout: TensorLayout) -> tuple[Path, IndexModel, Manifest]:
    """The newest snapshot under ``root`` that loads (checksums included), loaded; else ``SnapshotError``
    naming every snapshot skipped and why."""
    problems = []
    for path in list_snapshots(root):
        try:
            return (path, *load_snapshot(path, layout))
        except SnapshotError as exc:
            problems.append(str(exc))
    detail = "; ".join(problems) if problems else "no snapshot-* directory there"
    raise SnapshotError(f"{root}: no valid snapshot ({detail})")


def latest_valid_snapshot(root: Path, layout: TensorLayout) -> tuple[IndexModel, Manifest] | None:
    """The newest snapshot that loads; each one skipped is logged with its reason. ``None`` if none loads."""
    for path in list_snapshots(root):
        try:
            return load_snapshot(path, layout)
        except SnapshotError as exc:
            log.warning("skipping snapshot: %s", exc)
    return None
