"""``freshet verify``: equal models say so and exit 0; different ones name the first differing items and regions
with both values and exit 1, whether the sides are snapshots, snapshot roots or replicas over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from freshet.cli import main as cli_main
from freshet.deltas import Delta, DeltaKind, batch_of, encode_delta
from freshet.eligibility import EligibilityEncoder
from freshet.layout import REGION_ELIGIBILITY, REGION_EMBEDDING
from freshet.model import IndexModel
from freshet.offline.verify import compare, open_side
from freshet.snapshot import write_snapshot
from freshet.spec import load_feature_set
from freshet.versions import eligibility_version, embedding_version, feature_version
from serving.app import create_app
from serving.consumer import PolledBatch, SourceRecord
from serving.replica import Replica
from serving.settings import Settings

pytestmark = pytest.mark.http

FEATURE_DEFS = Path(__file__).resolve().parent.parent / "feature_defs"
FS = load_feature_set(FEATURE_DEFS)
LAYOUT = FS.layout()
T0 = 1_700_000_000_000
ITEMS = [101, 102, 103, 104, 105]
LIKES = LAYOUT.feature_region("likes_1h")


def deltas(items: list[int] = ITEMS, *, likes: Mapping[int, tuple[float, int]] | None = None) -> list[Delta]:
    """An embedding, eligibility words and ``likes_1h`` (value, firing) for each item."""
    rng = np.random.default_rng(3)
    encoder = EligibilityEncoder.of(FS)
    out = []
    for item in items:
        vector = rng.standard_normal(LAYOUT.embedding_dim).astype(np.float32)
        words = encoder.words({"policy_status": "approved", "region": ["PT"], "language": "pt"})
        value, firing = (likes or {}).get(item, (3.0, 0))
        out += [
            Delta(DeltaKind.EMBEDDING, item, REGION_EMBEDDING, embedding_version(T0), T0, vector),
            Delta(DeltaKind.ELIGIBILITY, item, REGION_ELIGIBILITY, eligibility_version(T0), T0, words),
            Delta(DeltaKind.FEATURE, item, LIKES, feature_version(T0 + 3_600_000, firing), T0,
                  np.array([value], np.float32)),
        ]  # fmt: skip
    return out


def model_of(ds: list[Delta]) -> IndexModel:
    model = IndexModel(LAYOUT)
    model.apply(batch_of(ds, LAYOUT))
    return model


def verify(*argv: str) -> list[str]:
    return ["verify", "--defs", str(FEATURE_DEFS), *argv]


def test_equal_snapshots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_snapshot(model_of(deltas()), tmp_path / "a", offsets={})
    b = write_snapshot(model_of(list(reversed(deltas()))), tmp_path / "b", offsets={0: 7})
    assert cli_main(verify(str(a), str(b))) == 0
    assert capsys.readouterr().out == f"equal (digest {model_of(deltas()).digest()})\n"


def test_a_root_means_its_newest_valid_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_snapshot(model_of(deltas()), tmp_path / "root", offsets={})
    newest = write_snapshot(model_of(deltas(ITEMS[:2])), tmp_path / "root", offsets={})
    (newest / "features.arrow").write_bytes(b"torn")  # corrupt: skipped for the older one
    other = write_snapshot(model_of(deltas()), tmp_path / "other", offsets={})
    assert cli_main(verify(str(tmp_path / "root"), str(other))) == 0
    assert capsys.readouterr().out.startswith("equal (digest ")


def test_differences_name_items_regions_and_both_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_snapshot(model_of(deltas()), tmp_path / "a", offsets={})
    changed = deltas(
        [*ITEMS, 999], likes={103: (4.0, 1)}
    )  # item 103 re-fired with 4 likes; item 999 only in B
    b = write_snapshot(model_of(changed), tmp_path / "b", offsets={})
    assert cli_main(verify(str(a), str(b))) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("differ: A digest ") and ", B digest " in out[0]
    assert "retrievable items: A 5 | B 6" in out
    first = out.index("item 103:")
    version = feature_version(T0 + 3_600_000, 0)
    assert out[first + 1] == (f"  likes_1h: A 3.0 @ v{version} (t={T0 + 3_600_000} ms, seq 0) | "
                              f"B 4.0 @ v{version + 1} (t={T0 + 3_600_000} ms, seq 1)")  # fmt: skip
    assert out[first + 2] == "item 999:", "only the differing region of 103; then the next item by id"
    assert "  embedding: A (absent) | B [" in out[first + 3]
    assert cli_main(verify(str(a), str(b), "--show", "1")) == 1
    shown = capsys.readouterr().out.splitlines()
    assert "item 999:" not in shown and shown[-1] == "(first 1 of 2 differing items)"


def test_unreadable_sides_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_snapshot(model_of(deltas()), tmp_path / "a", offsets={})
    assert cli_main(verify(str(a), str(tmp_path / "nothing"))) == 2
    assert "no valid snapshot" in capsys.readouterr().err
    assert cli_main(verify(str(a), "http://127.0.0.1:9", "--timeout", "2")) == 2
    assert "cannot read /v1/state" in capsys.readouterr().err


# ---------------------------------------------------------------- replicas over HTTP


class ListSource:
    """A delta topic of one partition held in memory: the replica's ``DeltaSource``."""

    def __init__(self, values: list[bytes]) -> None:
        self.values, self.next = values, 0

    def open(self, offsets: Mapping[int, int]) -> list[int]:
        self.next = offsets.get(0, 0)
        return [0]

    def poll(self, max_records: int, timeout_ms: int) -> PolledBatch:
        chunk = self.values[self.next : self.next + max_records]
        if not chunk:
            time.sleep(min(timeout_ms, 50) / 1000)
        records = [SourceRecord(0, self.next + i, v) for i, v in enumerate(chunk)]
        self.next += len(chunk)
        return PolledBatch.of_records(records)

    def position(self, partition: int) -> int:
        return self.next

    def end_offset(self, partition: int) -> int | None:
        return len(self.values)

    def close(self) -> None:
        pass


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[TestClient]:
    """A real replica app whose delta topic holds ``deltas()``, applied before the test starts."""
    values = [encode_delta(d, LAYOUT) for d in deltas()]
    settings = Settings.load({"snapshot_dir": tmp_path / "replica", "snapshot_every_s": 0, "snapshot_every_deltas": 0,
                              "admin_token": "s3cret"}, environ={})  # fmt: skip
    app = create_app(Replica(LAYOUT, settings, source_factory=lambda: ListSource(values), name="r"), settings)
    with TestClient(app) as client:
        deadline = time.monotonic() + 20
        while client.get("/v1/state").json()["offsets"] != {"0": len(values)}:
            assert time.monotonic() < deadline, "the replica did not apply its deltas"
            time.sleep(0.05)
        yield client


def test_a_replica_and_a_snapshot(tmp_path: Path, replica: TestClient) -> None:
    same = write_snapshot(model_of(deltas()), tmp_path / "same", offsets={})
    side = open_side("http://replica", LAYOUT, client=replica)
    assert compare(side, open_side(str(same), LAYOUT), LAYOUT).equal

    other = write_snapshot(model_of(deltas(likes={102: (9.5, 2)})), tmp_path / "other", offsets={})
    report = compare(open_side(str(other), LAYOUT), side, LAYOUT)  # no token: item by item over HTTP
    assert not report.equal
    assert [d.item_id for d in report.differences] == [102]
    (a, b), = report.differences[0].regions.values()  # fmt: skip
    assert (a, b) == ((9.5, feature_version(T0 + 3_600_000, 2)), (3.0, feature_version(T0 + 3_600_000, 0)))
    assert any(line.startswith("fetched 5 of the 5 items") for line in report.headline)


def test_two_replicas_compare_in_full_with_the_admin_token(tmp_path: Path, replica: TestClient) -> None:
    side = open_side("http://replica", LAYOUT, client=replica)
    assert compare(side, open_side("http://replica", LAYOUT, client=replica), LAYOUT).equal

    lagging = open_side("http://replica", LAYOUT, client=replica)
    lagging.digest = "0" * 64  # as if it had not applied everything yet when asked
    blind = compare(lagging, side, LAYOUT)
    assert not blind.equal and any("give --admin-token" in line for line in blind.headline)
    tokened = open_side("http://replica", LAYOUT, client=replica, admin_token="s3cret")
    tokened.digest = "0" * 64
    assert compare(
        tokened, open_side("http://replica", LAYOUT, client=replica, admin_token="s3cret"), LAYOUT
    ).equal

    other = write_snapshot(model_of(deltas(likes={104: (1.0, 3)})), tmp_path / "other", offsets={})
    full = compare(open_side(str(other), LAYOUT), tokened, LAYOUT)
    assert [d.item_id for d in full.differences] == [104] and full.total_differing == 1
    assert not any(line.startswith("fetched") for line in full.headline), "compared in full, not item by item"


def test_an_embedding_one_ulp_apart_is_shown_at_full_precision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nudged = deltas()
    vector = nudged[0].values.copy()
    vector[5] = np.nextafter(vector[5], np.float32(np.inf))  # what a different batch of the item tower gives
    nudged[0] = Delta(DeltaKind.EMBEDDING, ITEMS[0], REGION_EMBEDDING, embedding_version(T0), T0, vector)
    a = write_snapshot(model_of(deltas()), tmp_path / "a", offsets={})
    b = write_snapshot(model_of(nudged), tmp_path / "b", offsets={})
    assert cli_main(verify(str(a), str(b))) == 1
    out = capsys.readouterr().out.splitlines()
    at = out.index(f"item {ITEMS[0]}:")
    assert out[at + 1].startswith("  embedding: A [") and len(out) == at + 3
    before = float(deltas()[0].values[5])
    assert out[at + 2] == f"    1 values differ, first [5]: A {before!r} | B {float(vector[5])!r}"
