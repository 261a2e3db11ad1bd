"""Provision the Flink Kafka connector jars: download, extract the two we need, verify their sha256.

The jars come from the PyPI wheel ``shigawire-apache-flink-libraries`` (there is no Maven here). The wheel
is only downloaded, never installed: installing it would put a second, older Flink on the classpath.

    python -m flink_jobs.connector ensure     # idempotent; what ./dev setup runs
    python -m flink_jobs.connector paths      # print the jar paths, one per line
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL = "shigawire-apache-flink-libraries==2.0.0.post1"
_SHA_FILE = Path(__file__).with_name("connector_jars.sha256")


class ConnectorJarError(RuntimeError):
    """The connector jars are missing or do not match the recorded checksums."""


@dataclass(frozen=True)
class PinnedJar:
    name: str
    sha256: str
    version: str


def pinned_jars() -> list[PinnedJar]:
    jars = []
    for line in _SHA_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            sha, name, version = line.split()
            jars.append(PinnedJar(name, sha, version))
    return jars


def jar_dir() -> Path:
    """Where the jars live: ``$FRESHET_JAR_DIR`` or ``.freshet/jars`` at the repository root."""
    env = os.environ.get("FRESHET_JAR_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".freshet" / "jars"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, jar: PinnedJar) -> bool:
    return path.is_file() and _sha256(path) == jar.sha256


def jar_paths() -> list[Path]:
    """Verified jar paths; raises ``ConnectorJarError`` saying how to fix it if any is missing or altered."""
    paths = []
    for jar in pinned_jars():
        path = jar_dir() / jar.name
        if not _verified(path, jar):
            raise ConnectorJarError(
                f"{path} is missing or its sha256 is not {jar.sha256}; run `./dev setup` "
                "(or `python -m flink_jobs.connector ensure`) to fetch the Flink Kafka connector jars"
            )
        paths.append(path)
    return paths


def ensure() -> list[Path]:
    """Download and extract the jars unless verified copies are already in place."""
    missing = [j for j in pinned_jars() if not _verified(jar_dir() / j.name, j)]
    if missing:
        _fetch(missing)
    return jar_paths()


def _fetch(jars: list[PinnedJar]) -> None:
    target = jar_dir()
    target.mkdir(parents=True, exist_ok=True)
    print(f"==> fetching Flink Kafka connector jars from {WHEEL}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ConnectorJarError(f"`pip download {WHEEL}` failed:\n{done.stderr[-2000:]}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for jar in jars:
                data = zf.read(f"pyflink/lib/{jar.name}")
                if hashlib.sha256(data).hexdigest() != jar.sha256:
                    raise ConnectorJarError(f"{jar.name} in {wheel.name} does not match the recorded sha256")
                part = target / f".{jar.name}.part"
                part.write_bytes(data)
                part.replace(target / jar.name)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "ensure"
    if command == "ensure":
        for path in ensure():
            print(f"ok  {path}", file=sys.stderr)
    elif command == "paths":
        print("\n".join(str(p) for p in jar_paths()))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
