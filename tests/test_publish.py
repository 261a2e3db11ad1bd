"""Published models: atomic format, every refusal reason, and the double-buffered slot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from freshet.publish import ModelError, ModelSlot, load_published, publish_model, versions
from freshet.towers import TowerConfig, TwoTower, train_in_batch_softmax

DIM = 8
HASH = "0123456789abcdef"


def make_model(seed: int = 0) -> TwoTower:
    torch.manual_seed(seed)
    return TwoTower(
        TowerConfig(("user_id", "interests"), DIM, buckets=512, hidden=16),
        TowerConfig(("topic", "author_id"), DIM, buckets=512, hidden=16),
    )


@pytest.fixture
def published(tmp_path: Path) -> Path:
    return publish_model(tmp_path, "two_tower", make_model(), layout_hash=HASH)


def test_round_trip_gives_identical_embeddings(published: Path) -> None:
    model = make_model()
    loaded = load_published(published, layout_hash=HASH, dim=DIM)
    items = [{"topic": "cats", "author_id": 1}, {"topic": "dogs and cats", "author_id": 2}]
    assert loaded.version == 1
    assert torch.equal(loaded.item_tower.embed(items), model.item_tower.embed(items))


def test_versions_increase_and_are_immutable(tmp_path: Path) -> None:
    publish_model(tmp_path, "m", make_model(), layout_hash=HASH)
    publish_model(tmp_path, "m", make_model(1), layout_hash=HASH)
    assert versions(tmp_path, "m") == [1, 2]
    with pytest.raises(ModelError, match="immutable"):
        publish_model(tmp_path, "m", make_model(), layout_hash=HASH, version=2)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _nan_weights(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    first = next(iter(state))
    state[first][0] = float("nan")
    torch.save(state, path)
    manifest = json.loads((path.parent / "manifest.json").read_text())
    manifest["files"][path.name] = {
        "sha256": __import__("hashlib").sha256(path.read_bytes()).hexdigest(),
        "size": path.stat().st_size,
    }
    (path.parent / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "kwargs", "message"),
    [
        (lambda p: (p / "manifest.json").unlink(), {}, "no manifest.json"),
        (lambda p: (p / "item_tower.pt").unlink(), {}, "item_tower.pt: missing"),
        (
            lambda p: (p / "item_tower.pt").write_bytes((p / "item_tower.pt").read_bytes()[:100]),
            {},
            "truncated",
        ),
        (lambda p: _flip_byte(p / "query_tower.pt"), {}, "sha256 does not match"),
        (lambda p: None, {"layout_hash": "ffffffffffffffff"}, "layout hash"),
        (lambda p: None, {"dim": DIM * 2}, "outputs 8 dims"),
        (lambda p: _nan_weights(p / "item_tower.pt"), {}, "NaN or Inf"),
    ],
)
def test_every_damage_is_refused(published: Path, damage, kwargs, message: str) -> None:  # type: ignore[no-untyped-def]
    damage(published)
    with pytest.raises(ModelError, match=message):
        load_published(published, **{"layout_hash": HASH, "dim": DIM, **kwargs})


def test_slot_keeps_old_version_on_bad_candidate_and_rolls_back(tmp_path: Path) -> None:
    v1 = publish_model(tmp_path, "m", make_model(0), layout_hash=HASH)
    v2 = publish_model(tmp_path, "m", make_model(1), layout_hash=HASH)
    v3 = publish_model(tmp_path, "m", make_model(2), layout_hash=HASH)
    _flip_byte(v3 / "item_tower.pt")
    slot = ModelSlot()
    assert slot.try_load(v1, layout_hash=HASH, dim=DIM)
    assert slot.try_load(v2, layout_hash=HASH, dim=DIM)
    assert not slot.try_load(v3, layout_hash=HASH, dim=DIM)
    assert slot.version == 2 and slot.rejected == {"sha256": 1}
    assert not slot.try_load(
        v1, layout_hash=HASH, dim=DIM
    )  # older than active: refused, not a silent downgrade
    assert slot.rollback().version == 1 and slot.version == 1
    with pytest.raises(ModelError, match="no previous"):
        slot.rollback()


def test_training_learns_the_synthetic_affinity() -> None:
    torch.manual_seed(0)
    topics = ["cats", "dogs", "cars", "food"]
    pairs = [
        ({"user_id": u, "interests": topics[u % 4]}, {"topic": topics[u % 4], "author_id": u % 7})
        for u in range(800)
    ]
    model = make_model()
    losses = train_in_batch_softmax(model, pairs, epochs=4, batch_size=64)
    assert losses[-1] < losses[0] * 0.8
    q = model.query_tower.embed([{"user_id": 1000, "interests": "cars"}])
    items = model.item_tower.embed([{"topic": t, "author_id": 3} for t in topics])
    assert topics[int((q @ items.T).argmax())] == "cars"


def test_embeddings_do_not_depend_on_the_batch_around_them() -> None:
    tower = make_model().item_tower
    items = [{"topic": f"t{i % 5} x{i}", "author_id": i} for i in range(300)]
    full = tower.embed(items)
    for start, size in ((0, 1), (5, 7), (64, 64), (299, 1), (17, 250)):
        assert torch.equal(tower.embed(items[start : start + size]), full[start : start + size])
    assert tower.embed([]).shape == (0, DIM)
