"""Snapshots: bit-identical round trips, atomic publishing, and refusal of every kind of corruption."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from index_helpers import embedding, random_stream, small_layout, wide_layout

from freshet.deltas import batch_of
from freshet.model import IndexModel
from freshet.model_state import ARRAY_NAMES
from freshet.snapshot import (
    MANIFEST,
    Manifest,
    SnapshotError,
    latest_valid_snapshot,
    list_snapshots,
    load_snapshot,
    write_snapshot,
)

LAYOUT = small_layout()
OFFSETS = {0: 1200, 1: 0, 5: 77}


def live_model(layout=LAYOUT, seed: int = 0, n: int = 800) -> IndexModel:  # type: ignore[no-untyped-def]
    model = IndexModel(layout, capacity=3, model_version=4)
    stream = random_stream(layout, random.Random(seed), n, model_version=4)
    for i in range(0, n, 50):
        model.apply(batch_of(stream[i : i + 50], layout))
    return model


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_is_bit_identical(tmp_path: Path, dtype: str) -> None:
    layout = small_layout(embedding_dtype=dtype)
    model = live_model(layout)
    path = write_snapshot(model, tmp_path, OFFSETS, topic="freshet.deltas", flink_checkpoint="chk-17")
    loaded, manifest = load_snapshot(path, layout, verify_digest=True)
    assert loaded.digest() == model.digest() == manifest.digest
    before, after = model.export_state(), loaded.export_state()
    for name in ARRAY_NAMES:
        assert getattr(after, name).tobytes() == getattr(before, name).tobytes(), name
    assert (manifest.offsets, manifest.topic, manifest.flink_checkpoint) == (
        OFFSETS,
        "freshet.deltas",
        "chk-17",
    )
    assert (manifest.model_version, loaded.model_version) == (model.model_version, model.model_version)
    assert manifest.row_count == len(model) == len(loaded) > 10 and manifest.layout_hash == layout.layout_hash
    assert manifest.tombstones == model.num_tombstones > 0


def test_a_restored_replica_and_a_live_one_converge(tmp_path: Path) -> None:
    stream = random_stream(LAYOUT, random.Random(5), 1200)
    live, early = IndexModel(LAYOUT), IndexModel(LAYOUT)
    live.apply(batch_of(stream[:700], LAYOUT))
    early.apply(batch_of(stream[:700], LAYOUT))
    restored, manifest = load_snapshot(write_snapshot(early, tmp_path, {0: 700}), LAYOUT)
    live.apply(batch_of(stream[700:], LAYOUT))
    restored.apply(batch_of(stream[manifest.offsets[0] :], LAYOUT))
    assert restored.digest() == live.digest()
    query = torch.tensor([1.0, -1.0, 0.5, 2.0])
    assert restored.retrieve(query, 20).item_ids.tolist() == live.retrieve(query, 20).item_ids.tolist()


def test_empty_model_round_trips(tmp_path: Path) -> None:
    model = IndexModel(LAYOUT)
    loaded, manifest = load_snapshot(write_snapshot(model, tmp_path, {}), LAYOUT, verify_digest=True)
    assert loaded.digest() == model.digest() and manifest.offsets == {} and manifest.flink_checkpoint is None
    loaded.apply(batch_of([embedding(1, 1, [1, 2, 3, 4])], LAYOUT))
    assert len(loaded) == 1


def test_snapshots_are_listed_newest_first_and_temporaries_ignored(tmp_path: Path) -> None:
    model = live_model()
    paths = [write_snapshot(model, tmp_path, {0: i}) for i in range(3)]
    (tmp_path / ".tmp-snapshot-abandoned").mkdir()
    (tmp_path / "snapshot-notanumber").mkdir()
    assert list_snapshots(tmp_path) == paths[::-1]
    assert [p.name for p in paths] == ["snapshot-0000000001", "snapshot-0000000002", "snapshot-0000000003"]
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith(".tmp") and p.name != ".tmp-snapshot-abandoned"
    ]


def test_a_failed_write_leaves_no_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("freshet.snapshot.write_synced", boom)
    with pytest.raises(OSError, match="disk full"):
        write_snapshot(live_model(), tmp_path, {})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- corruption


def _truncate(path: Path) -> None:
    file = path / "item_embedding.arrow"
    file.write_bytes(file.read_bytes()[:-100])


def _flip_byte(path: Path) -> None:
    file = path / "versions.arrow"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def _edit_manifest(change: Callable[[dict], None], rechecksum: bool = False) -> Callable[[Path], None]:  # type: ignore[type-arg]
    def edit(path: Path) -> None:
        body = json.loads((path / MANIFEST).read_text())
        change(body)
        if rechecksum:  # a forger who also fixes the checksum still meets the file and shape checks
            body.pop("checksum")
            body["offsets"] = {int(p): o for p, o in body["offsets"].items()}
            (path / MANIFEST).write_text(Manifest(**body).to_json())
        else:
            (path / MANIFEST).write_text(json.dumps(body))

    return edit


CORRUPTIONS = {
    "truncated file": (_truncate, "bytes, the manifest says"),
    "flipped byte": (_flip_byte, "sha256 mismatch"),
    "missing file": (lambda p: (p / "features.arrow").unlink(), "features.arrow: missing"),
    "missing manifest": (lambda p: (p / MANIFEST).unlink(), "no manifest.json"),
    "truncated manifest": (lambda p: (p / MANIFEST).write_text((p / MANIFEST).read_text()[:40]), MANIFEST),
    "manifest offsets altered": (
        _edit_manifest(lambda b: b["offsets"].update({"0": 1})),
        "checksum mismatch",
    ),
    "manifest digest altered": (_edit_manifest(lambda b: b.update(digest="0" * 64)), "checksum mismatch"),
    "unknown format": (_edit_manifest(lambda b: b.update(format_version=99), True), "format version 99"),
    "forged row count": (_edit_manifest(lambda b: b.update(rows=b["rows"] + 1), True), "the layout wants"),
    "forged file list": (_edit_manifest(lambda b: b["files"].pop("valid.arrow"), True), "manifest lists"),
    "garbage array file": (
        _edit_manifest(lambda b: b["files"]["valid.arrow"].update(bytes=3, sha256="a" * 64), True),
        "bytes, the manifest says",
    ),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_every_corruption_is_refused_and_the_current_model_untouched(tmp_path: Path, corrupt: str) -> None:
    damage, message = CORRUPTIONS[corrupt]
    path = write_snapshot(live_model(), tmp_path, OFFSETS)
    damage(path)
    current = live_model(seed=9, n=100)
    before = current.digest()
    with pytest.raises(SnapshotError, match=message) as err:
        load_snapshot(path, LAYOUT)
    assert str(path) in str(err.value)
    assert current.digest() == before


def test_a_snapshot_of_another_layout_is_refused(tmp_path: Path) -> None:
    path = write_snapshot(live_model(wide_layout()), tmp_path, {})
    with pytest.raises(SnapshotError, match="this replica's layout is"):
        load_snapshot(path, LAYOUT)


def test_arrays_of_another_shape_are_refused_even_with_a_forged_layout_hash(tmp_path: Path) -> None:
    path = write_snapshot(live_model(wide_layout()), tmp_path, {})
    _edit_manifest(lambda b: b.update(layout_hash=LAYOUT.layout_hash), True)(path)
    with pytest.raises(SnapshotError, match="the layout wants"):
        load_snapshot(path, LAYOUT)


def test_latest_valid_snapshot_skips_corrupt_ones_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = live_model()
    good = write_snapshot(model, tmp_path, {0: 1})
    _flip_byte(write_snapshot(model, tmp_path, {0: 2}))
    (write_snapshot(model, tmp_path, {0: 3}) / MANIFEST).unlink()
    with caplog.at_level(logging.WARNING, logger="freshet.snapshot"):
        found = latest_valid_snapshot(tmp_path, LAYOUT)
    assert found is not None and found[1].offsets == {0: 1} and found[0].digest() == model.digest()
    reasons = [r.getMessage() for r in caplog.records if r.name == "freshet.snapshot"]
    assert len(reasons) == 2 and "no manifest.json" in reasons[0] and "sha256 mismatch" in reasons[1]
    assert str(good) not in " ".join(reasons)


def test_no_valid_snapshot_gives_none(tmp_path: Path) -> None:
    assert latest_valid_snapshot(tmp_path / "absent", LAYOUT) is None
    _truncate(write_snapshot(live_model(), tmp_path, {}))
    assert latest_valid_snapshot(tmp_path, LAYOUT) is None


def test_restore_replaces_a_model_in_place(tmp_path: Path) -> None:
    source, target = live_model(seed=1), live_model(seed=2)
    target.restore(source.export_state())
    assert target.digest() == source.digest()
    assert np.array_equal(
        target.retrieve(torch.ones(4), 5).item_ids, source.retrieve(torch.ones(4), 5).item_ids
    )


def test_a_state_exported_at_the_cut_can_be_written_later(tmp_path: Path) -> None:
    model = live_model()
    with model.paused():
        state, offsets = model.export_state(), {0: 800}
    model.apply(batch_of([embedding(10_000, 1, [1, 1, 1, 1], model_version=4)], LAYOUT))
    loaded, manifest = load_snapshot(write_snapshot(state, tmp_path, offsets), LAYOUT, verify_digest=True)
    assert loaded.item(10_000) is None and manifest.offsets == offsets and model.item(10_000) is not None


def test_applying_to_a_loaded_model_never_writes_the_snapshot(tmp_path: Path) -> None:
    """Loaded buffers are copy-on-write mappings of the snapshot files: apply changes the model only."""
    model = live_model()
    path = write_snapshot(model, tmp_path, {})
    loaded, _ = load_snapshot(path, LAYOUT)
    for item_id in range(40):
        loaded.apply(batch_of([embedding(item_id, 10_000, [9, 9, 9, 9], model_version=4)], LAYOUT))
    assert loaded.digest() != model.digest()
    again, manifest = load_snapshot(path, LAYOUT, verify_digest=True)
    assert again.digest() == model.digest() == manifest.digest
