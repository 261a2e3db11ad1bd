"""Compare two models — replicas over HTTP, snapshots, backfills — and name the first cells that differ.

A side is ``http(s)://host:port`` (a running replica), a snapshot directory, or a snapshot root (its
newest valid snapshot; a backfill's ``--out`` is one). Equal digests (``IndexModel.digest``: every
occupied row and tombstone, independent of row order) mean equal models. Otherwise the sides are
compared item by item: two full states (snapshots, or replicas asked for a snapshot with the admin
token) directly; a replica without one by fetching, for each item of the other side, its row from
``GET /v1/items/{id}``. Two replicas without the token can only be told apart by digest.

A cell is one region of one item — ``embedding``, ``eligibility`` or a feature column — with its
version; differences show both values and versions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from freshet.bits import positions_from_words
from freshet.errors import FreshetError
from freshet.layout import TensorLayout
from freshet.model_state import ModelState, state_digest
from freshet.snapshot import MANIFEST, SnapshotError, load_snapshot, newest_valid_snapshot
from freshet.versions import VERSION_SEQ_BITS, version_time_ms

Value = tuple[float, ...] | float | None
Cells = dict[str, tuple[Value, int]]
"""One item's regions by name: (value, version). Embedding: float32 values (None if none); eligibility:
set bit positions; a feature: its float32 value."""


class VerifyError(FreshetError):
    """A side cannot be read (unreachable replica, no valid snapshot); the message names it."""


@dataclass
class Side:
    """One model to compare: what it is, its digest, and its items (all at once, or one by one)."""

    label: str
    digest: str
    model_version: int
    layout_hash: str
    items: int  # retrievable items
    state: ModelState | None = None
    fetch: Callable[[int], Cells | None] | None = None
    snapshot: Callable[[], Path | None] | None = None


@dataclass(frozen=True)
class Difference:
    """One item whose cells differ, or that only one side holds."""

    item_id: int
    regions: dict[str, tuple[tuple[Value, int] | None, tuple[Value, int] | None]]


@dataclass(frozen=True)
class Report:
    """The verdict: equal, or what differs (``headline`` lines, then the first differing items)."""

    equal: bool
    digest_a: str
    digest_b: str
    headline: list[str]
    differences: list[Difference]
    total_differing: int | None  # None when the comparison could not count them all

    def lines(self, names: tuple[str, str] = ("A", "B")) -> Iterator[str]:
        if self.equal:
            yield f"equal (digest {self.digest_a})"
            return
        yield f"differ: {names[0]} digest {self.digest_a}, {names[1]} digest {self.digest_b}"
        yield from self.headline
        for diff in self.differences:
            yield f"item {diff.item_id}:"
            for region, (a, b) in diff.regions.items():
                yield f"  {region}: {names[0]} {_show(a)} | {names[1]} {_show(b)}"
                if a is not None and b is not None and isinstance(a[0], tuple) and isinstance(b[0], tuple):
                    yield from _first_value_apart(a[0], b[0], names)
        if self.total_differing is not None and self.total_differing > len(self.differences):
            yield f"(first {len(self.differences)} of {self.total_differing} differing items)"


def _show(cell: tuple[Value, int] | None) -> str:
    if cell is None:
        return "(absent)"
    value, version = cell
    if isinstance(value, tuple) and len(value) > 6:
        shown = "[" + ", ".join(f"{v:.6g}" for v in value[:4]) + f", … {len(value)} values]"
    else:
        shown = "none" if value is None else repr(list(value) if isinstance(value, tuple) else value)
    return f"{shown} @ {_version(version)}"


def _first_value_apart(a: tuple[float, ...], b: tuple[float, ...], names: tuple[str, str]) -> Iterator[str]:
    """Where two vectors first differ, at full precision (their shortened forms may look alike)."""
    apart = [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if _bits(x) != _bits(y)]
    if apart:
        i = apart[0]
        yield f"    {len(apart)} values differ, first [{i}]: {names[0]} {a[i]!r} | {names[1]} {b[i]!r}"


def _version(version: int) -> str:
    if version < 0:
        return "never written"
    return f"v{version} (t={version_time_ms(version)} ms, seq {version & ((1 << VERSION_SEQ_BITS) - 1)})"


# ---------------------------------------------------------------- opening sides


def open_side(
    spec: str,
    layout: TensorLayout,
    *,
    admin_token: str | None = None,
    timeout_s: float = 10.0,
    client: httpx.Client | None = None,
) -> Side:
    """The side ``spec`` names: a replica URL, a snapshot directory, or a snapshot root.

    ``client`` talks to the replica instead of a new ``httpx.Client`` for the URL (an in-process app).
    """
    if spec.startswith(("http://", "https://")) or client is not None:
        client = client or httpx.Client(base_url=spec.rstrip("/"), timeout=timeout_s)
        return _replica(spec, client, layout, admin_token, timeout_s)
    return snapshot_side(Path(spec), layout)


def snapshot_side(path: Path, layout: TensorLayout, label: str | None = None) -> Side:
    """A snapshot directory, or the newest valid snapshot under a root."""
    try:
        if (path / MANIFEST).exists():
            chosen, (model, manifest) = path, load_snapshot(path, layout)
        else:
            chosen, model, manifest = newest_valid_snapshot(path, layout)
    except SnapshotError as exc:
        raise VerifyError(str(exc)) from exc
    state = model.export_state()
    return Side(label or f"snapshot {chosen}", state_digest(state), manifest.model_version, manifest.layout_hash,
                int(state.valid.sum()), state=state)  # fmt: skip


def _replica(
    url: str, client: httpx.Client, layout: TensorLayout, admin_token: str | None, timeout_s: float
) -> Side:
    try:
        state = client.get("/v1/state").raise_for_status().json()
    except httpx.HTTPError as exc:
        raise VerifyError(f"replica {url}: cannot read /v1/state ({exc})") from exc

    def fetch(item_id: int) -> Cells | None:
        try:
            response = client.get(f"/v1/items/{item_id}")
            if response.status_code == 404:
                return None
            return _cells_from_http(response.raise_for_status().json(), layout)
        except httpx.HTTPError as exc:
            raise VerifyError(f"replica {url}: GET /v1/items/{item_id} failed ({exc})") from exc

    def snapshot() -> Path | None:
        """The replica's snapshot written now, if a token is given and its path is readable here."""
        if admin_token is None:
            return None
        headers = {"Authorization": f"Bearer {admin_token}"}
        try:
            taken = client.post("/admin/snapshot", headers=headers, timeout=max(timeout_s, 120.0))
            path = Path(taken.raise_for_status().json()["path"])
        except httpx.HTTPError as exc:
            raise VerifyError(f"replica {url}: POST /admin/snapshot failed ({exc})") from exc
        return path if path.is_dir() else None

    return Side(f"replica {url}", state["digest"], state["model_version"], state["layout_hash"], state["items"],
                fetch=fetch, snapshot=snapshot)  # fmt: skip


# ---------------------------------------------------------------- cells


def cells_of_state(state: ModelState, layout: TensorLayout, row: int) -> Cells:
    """The cells of one occupied row of a full state."""
    names = ["embedding", "eligibility", *(c.name for c in layout.feature_columns)]
    versions = state.versions[row].tolist()
    embedding = tuple(_float32(state.item_embedding[row]).tolist()) if state.valid[row] else None
    cells: Cells = {"embedding": (embedding, versions[0])}
    cells["eligibility"] = (
        tuple(float(p) for p in positions_from_words(state.eligibility[row])),
        versions[1],
    )
    for i, name in enumerate(names[2:]):
        cells[name] = (float(state.features[row, i]), versions[2 + i])
    return cells


def _cells_from_http(body: Mapping[str, Any], layout: TensorLayout) -> Cells:
    versions = body["versions"]
    embedding = body["embedding"]
    eligibility = body["eligibility"]
    positions = {layout.bit(name).position for name in eligibility["bits"]}
    for name, relative in eligibility["bloom"].items():
        positions |= {layout.bloom(name).offset + p for p in relative}
    cells: Cells = {
        "embedding": (
            None if embedding is None else tuple(np.asarray(embedding, dtype=np.float32).tolist()),
            versions["embedding"],
        ),
        "eligibility": (tuple(float(p) for p in sorted(positions)), versions["eligibility"]),
    }
    for column in layout.feature_columns:
        cells[column.name] = (float(np.float32(body["features"][column.name])), versions[column.name])
    return cells


def _float32(values: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """An embedding row as float32 (bfloat16 rows are stored as uint16 bits)."""
    if values.dtype == np.uint16:
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def _same(a: tuple[Value, int] | None, b: tuple[Value, int] | None) -> bool:
    """Bitwise equality of cells as float32 (so NaN equals NaN, and 0.0 differs from -0.0)."""
    if a is None or b is None:
        return a is b
    return a[1] == b[1] and _bits(a[0]) == _bits(b[0])


def _bits(value: Value) -> bytes | None:
    return None if value is None else np.asarray(value, dtype=np.float32).tobytes()


def diff_cells(item_id: int, a: Cells | None, b: Cells | None) -> Difference | None:
    """The regions where ``a`` and ``b`` differ; every region when only one side holds the item."""
    if a is None or b is None:
        present = a or b
        if present is None:
            return None
        return Difference(
            item_id, {n: (None if a is None else a[n], None if b is None else b[n]) for n in present}
        )
    names = dict.fromkeys([*a, *b])
    regions = {n: (a.get(n), b.get(n)) for n in names if not _same(a.get(n), b.get(n))}
    return Difference(item_id, regions) if regions else None


# ---------------------------------------------------------------- comparing


def compare(a: Side, b: Side, layout: TensorLayout, *, show: int = 10, probe_limit: int = 100_000) -> Report:
    """Whether ``a`` and ``b`` hold the same model, and if not, the first ``show`` differing items by id."""
    if a.digest == b.digest:
        return Report(True, a.digest, b.digest, [], [], 0)
    headline = [f"A is {a.label}; B is {b.label}"]
    for what, x, y in (("model version", a.model_version, b.model_version),
                       ("layout hash", a.layout_hash, b.layout_hash), ("retrievable items", a.items, b.items)):  # fmt: skip
        if x != y:
            headline.append(f"{what}: A {x} | B {y}")
    a, b = _with_state(a, layout), _with_state(b, layout)
    if a.digest == b.digest:  # replicas that moved on to agree by the time they wrote their snapshots
        return Report(True, a.digest, b.digest, [], [], 0)
    if a.state is not None and b.state is not None:
        diffs, total, notes = _state_differences(a.state, b.state, layout, show)
        return Report(False, a.digest, b.digest, headline + notes, diffs, total)
    if a.state is not None and b.fetch is not None:
        diffs, notes = _probe(a.state, b.fetch, layout, show, probe_limit, state_is_a=True)
    elif b.state is not None and a.fetch is not None:
        diffs, notes = _probe(b.state, a.fetch, layout, show, probe_limit, state_is_a=False)
    else:
        diffs, notes = (
            [],
            ["two replicas: give --admin-token so each writes a snapshot to compare item by item"],
        )
    return Report(False, a.digest, b.digest, headline + notes, diffs, None)


def _with_state(side: Side, layout: TensorLayout) -> Side:
    """A replica side with its full state, from a snapshot it writes now (needs the admin token)."""
    if side.state is not None or side.snapshot is None:
        return side
    path = side.snapshot()
    if path is None:
        return side
    taken = snapshot_side(path, layout, label=f"{side.label} (its snapshot {path})")
    return Side(
        taken.label, taken.digest, taken.model_version, taken.layout_hash, taken.items, state=taken.state
    )


def _state_differences(
    a: ModelState, b: ModelState, layout: TensorLayout, show: int
) -> tuple[list[Difference], int, list[str]]:
    """Every item whose row differs or that one side lacks, and the first ``show`` of them as cells."""
    rows_a, rows_b = np.flatnonzero(a.occupied), np.flatnonzero(b.occupied)
    ids_a, ids_b = a.item_ids[rows_a], b.item_ids[rows_b]
    common, at_a, at_b = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
    differs = np.zeros(common.shape[0], dtype=bool)
    for name in ("valid", "item_embedding", "features", "eligibility", "versions"):
        differs |= _rows_differ(getattr(a, name)[rows_a[at_a]], getattr(b, name)[rows_b[at_b]])
    only = np.concatenate([np.setdiff1d(ids_a, ids_b), np.setdiff1d(ids_b, ids_a)])
    differing = np.sort(np.concatenate([common[differs], only]))
    where_a = dict(zip(ids_a.tolist(), rows_a.tolist(), strict=True))
    where_b = dict(zip(ids_b.tolist(), rows_b.tolist(), strict=True))
    diffs = []
    for item in differing[:show].tolist():
        cells_a = cells_of_state(a, layout, where_a[item]) if item in where_a else None
        cells_b = cells_of_state(b, layout, where_b[item]) if item in where_b else None
        diffs.append(diff_cells(item, cells_a, cells_b) or Difference(item, {}))
    return diffs, int(differing.shape[0]), _tombstone_notes(a, b)


def _rows_differ(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Per row, whether the bytes differ (bitwise: NaN equals NaN, -0.0 differs from 0.0)."""
    n = x.shape[0]
    bx = np.ascontiguousarray(x).view(np.uint8).reshape(n, -1)
    by = np.ascontiguousarray(y).view(np.uint8).reshape(n, -1)
    result: npt.NDArray[np.bool_] = (bx != by).any(axis=1)
    return result


def _tombstone_notes(a: ModelState, b: ModelState) -> list[str]:
    tombs_a = dict(zip(a.tomb_ids.tolist(), a.tomb_versions.tolist(), strict=True))
    tombs_b = dict(zip(b.tomb_ids.tolist(), b.tomb_versions.tolist(), strict=True))
    differing = sorted(i for i in tombs_a.keys() | tombs_b.keys() if tombs_a.get(i) != tombs_b.get(i))
    if not differing:
        return []
    shown = ", ".join(f"{i} (A {tombs_a.get(i)} | B {tombs_b.get(i)})" for i in differing[:5])
    return [f"tombstones differ for {len(differing)} items: {shown}"]


def _probe(
    state: ModelState,
    fetch: Callable[[int], Cells | None],
    layout: TensorLayout,
    show: int,
    limit: int,
    *,
    state_is_a: bool,
) -> tuple[list[Difference], list[str]]:
    """Fetch, item by item (ascending id), the replica's row of each item the full state holds."""
    rows = np.flatnonzero(state.occupied)
    rows = rows[np.argsort(state.item_ids[rows], kind="stable")]
    diffs: list[Difference] = []
    checked = 0
    for row in rows[:limit].tolist():
        item = int(state.item_ids[row])
        mine, theirs = cells_of_state(state, layout, row), fetch(item)
        found = diff_cells(item, mine, theirs) if state_is_a else diff_cells(item, theirs, mine)
        checked += 1
        if found is not None:
            diffs.append(found)
            if len(diffs) >= show:
                break
    notes = [f"fetched {checked} of the {rows.shape[0]} items held by the snapshot side from the replica"]
    if not diffs:
        notes.append("all of them are equal: the replica holds items or tombstones the snapshot lacks")
    return diffs, notes
