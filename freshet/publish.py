"""Published models: an atomic on-disk format, verified loading, and a double-buffered active slot.

A publish is a directory ``<root>/<name>/v<version:08d>/`` holding

* ``query_tower.pt`` and ``item_tower.pt`` — ``state_dict``s saved with ``torch.save`` and loaded with
  ``weights_only=True`` (no pickle code runs on load; TorchScript is avoided because it is deprecated);
* ``manifest.json`` — written last: name, version, layout hash, tower configs, parameter counts, and the
  sha256 and size of every file.

``publish_model`` writes into a temporary directory beside the target, fsyncs, and renames, so a reader
sees a whole version or none. ``load_published`` refuses anything that fails a check, with a message
that names the file and the check. ``ModelSlot`` is the seed's "double buffer + version flag": the new
version is loaded and checked off to the side, then one reference assignment makes it active; the
previous one is kept for a one-call rollback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from freshet.errors import FreshetError
from freshet.files import fsync_path, sha256_file
from freshet.towers import Tower, TowerConfig, TwoTower

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_VERSION_DIR = re.compile(r"^v(\d{8})$")


class ModelError(FreshetError):
    """A published model is missing, corrupt, or incompatible with the layout."""


@dataclass(frozen=True)
class PublishedModel:
    """A verified published version: both towers, in eval mode, and its manifest."""

    name: str
    version: int
    layout_hash: str
    query_tower: Tower
    item_tower: Tower
    path: Path
    manifest: Mapping[str, Any] = field(repr=False)


def versions(root: Path, name: str) -> list[int]:
    """Published versions of ``name`` under ``root``, ascending (only directories with a manifest)."""
    base = Path(root) / name
    if not base.is_dir():
        return []
    found = [(m, p) for p in base.iterdir() if (m := _VERSION_DIR.match(p.name))]
    return sorted(int(m.group(1)) for m, p in found if (p / MANIFEST).is_file())


def version_dir(root: Path, name: str, version: int) -> Path:
    return Path(root) / name / f"v{version:08d}"


def publish_model(
    root: Path, name: str, model: TwoTower, *, layout_hash: str, version: int | None = None
) -> Path:
    """Publish ``model`` atomically as the next (or the given) version; returns its directory."""
    version = version if version is not None else max(versions(root, name), default=0) + 1
    final = version_dir(root, name, version)
    if final.exists():
        raise ModelError(f"{final} already exists; versions are immutable, publish a new one")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version:08d}-", dir=final.parent))
    try:
        _write_version(tmp, name, version, model, layout_hash)
        os.rename(tmp, final)
        fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_version(tmp: Path, name: str, version: int, model: TwoTower, layout_hash: str) -> None:
    towers = {"query_tower": model.query_tower, "item_tower": model.item_tower}
    files = {}
    for key, tower in towers.items():
        path = tmp / f"{key}.pt"
        torch.save(tower.state_dict(), path)
        with path.open("rb") as f:
            os.fsync(f.fileno())
        files[path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "layout_hash": layout_hash,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "towers": {k: {**t.config.to_dict(), "parameters": t.parameter_count()} for k, t in towers.items()},
        "files": files,
    }
    with (tmp / MANIFEST).open("w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(tmp)


def load_published(path: Path, *, layout_hash: str, dim: int) -> PublishedModel:
    """Load and verify one published version; raise ``ModelError`` naming what failed.

    Checks: manifest readable, file sizes and sha256, layout hash, output dim of both towers,
    parameter counts, and that no parameter holds NaN or Inf.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    _check_files(path, manifest)
    if manifest["layout_hash"] != layout_hash:
        raise ModelError(
            f"{path}: layout hash {manifest['layout_hash']} does not match this deployment's {layout_hash}; "
            "publish a model trained for the current feature_defs"
        )
    towers = {key: _load_tower(path, key, manifest, dim) for key in ("query_tower", "item_tower")}
    return PublishedModel(
        name=str(manifest["name"]),
        version=int(manifest["version"]),
        layout_hash=layout_hash,
        query_tower=towers["query_tower"],
        item_tower=towers["item_tower"],
        path=path,
        manifest=manifest,
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ModelError(
            f"{path}: no {MANIFEST}; not a published model (or a publish still in progress)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path / MANIFEST}: not valid JSON ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path / MANIFEST}: format_version {manifest.get('format_version')!r} unsupported")
    return manifest


def _check_files(path: Path, manifest: Mapping[str, Any]) -> None:
    for name, meta in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise ModelError(f"{file}: missing")
        if file.stat().st_size != meta["size"]:
            raise ModelError(
                f"{file}: size {file.stat().st_size} != {meta['size']} in the manifest (truncated?)"
            )
        if sha256_file(file) != meta["sha256"]:
            raise ModelError(f"{file}: sha256 does not match the manifest (corrupt or altered)")


def _load_tower(path: Path, key: str, manifest: Mapping[str, Any], dim: int) -> Tower:
    meta = manifest["towers"][key]
    config = TowerConfig.from_dict(meta)
    if config.dim != dim:
        raise ModelError(f"{path}: {key} outputs {config.dim} dims, the layout's embedding has {dim}")
    tower = Tower(config)
    try:
        tower.load_state_dict(torch.load(path / f"{key}.pt", weights_only=True))
    except (RuntimeError, KeyError) as exc:
        raise ModelError(f"{path}: {key}.pt does not fit its declared architecture ({exc})") from None
    if tower.parameter_count() != meta["parameters"]:
        raise ModelError(
            f"{path}: {key} has {tower.parameter_count()} parameters, manifest says {meta['parameters']}"
        )
    if not all(bool(torch.isfinite(p).all()) for p in tower.parameters()):
        raise ModelError(f"{path}: {key} holds NaN or Inf parameters")
    return tower.eval()


class ModelSlot:
    """Double buffer + version flag: ``active`` is swapped by one reference assignment.

    Readers take ``slot.active`` once per batch and use that object throughout, so a batch never mixes
    versions. ``swap`` and ``rollback`` are serialized by a lock; readers never wait on it.
    """

    def __init__(self, initial: PublishedModel | None = None) -> None:
        self._lock = threading.Lock()
        self.active: PublishedModel | None = initial
        self.previous: PublishedModel | None = None
        self.rejected: dict[str, int] = {}

    @property
    def version(self) -> int:
        return self.active.version if self.active is not None else 0

    def swap(self, candidate: PublishedModel) -> None:
        with self._lock:
            if self.active is not None and candidate.version <= self.active.version:
                raise ModelError(
                    f"version {candidate.version} is not newer than the active {self.active.version}; "
                    "use rollback to go back"
                )
            self.previous, self.active = self.active, candidate

    def try_load(self, path: Path, *, layout_hash: str, dim: int) -> bool:
        """Load, check and swap in ``path``; on any failure keep the active version and count why."""
        try:
            self.swap(load_published(path, layout_hash=layout_hash, dim=dim))
        except ModelError as exc:
            reason = _reason(str(exc))
            with self._lock:
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
            return False
        return True

    def rollback(self) -> PublishedModel:
        """Make the previous version active again (one call); the rolled-back one is forgotten."""
        with self._lock:
            if self.previous is None:
                raise ModelError("no previous model version to roll back to")
            self.active, self.previous = self.previous, None
            return self.active


def _reason(message: str) -> str:
    for key in ("layout hash", "sha256", "size", "NaN", "parameters", "dims", "missing", "manifest", "newer"):
        if key in message:
            return key.replace(" ", "_").lower()
    return "invalid"
