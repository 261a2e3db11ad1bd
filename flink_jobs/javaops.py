"""Compile the project's JVM operators (``flink_jobs/java/**/*.java``) into one jar with the JDK's ``javac``.

A few parts of a freshet job must run inside the JVM: Python functions have no hook at a checkpoint barrier,
and a per-event Python call caps a job at a few thousand events/s (ENVIRONMENT.md). Their sources live in
``flink_jobs/java`` and are compiled at set-up (there is no Maven here) against the Flink distribution inside
PyFlink and the Kafka connector jars, into ``freshet-ops.jar`` beside the connector jars. The jar is rebuilt
when a source or the JDK changes (a sha256 stamp beside it), and goes on ``pipeline.jars`` with the connector.

    python -m flink_jobs.javaops ensure     # idempotent; what ./dev setup runs
    python -m flink_jobs.javaops paths      # print the jar path (nothing when there are no sources), like connector
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from flink_jobs import connector

SOURCE_DIR = Path(__file__).resolve().parent / "java"
JAR_NAME = "freshet-ops.jar"
JAVA_RELEASE = "17"


class JavaBuildError(RuntimeError):
    """The JVM operators could not be compiled, or their jar is missing or stale."""


def sources(source_dir: Path = SOURCE_DIR) -> list[Path]:
    """Every ``.java`` file under ``source_dir``, in a stable order."""
    return sorted(source_dir.rglob("*.java")) if source_dir.is_dir() else []


def jar_path(target_dir: Path | None = None) -> Path:
    return (target_dir or connector.jar_dir()) / JAR_NAME


def _stamp_path(jar: Path) -> Path:
    return jar.with_name(jar.name + ".sha256")


def fingerprint(files: Sequence[Path], source_dir: Path, javac_version: str) -> str:
    """sha256 over the JDK version and every source's relative path and bytes."""
    h = hashlib.sha256(javac_version.encode())
    for path in files:
        h.update(str(path.relative_to(source_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _javac() -> str:
    javac = shutil.which("javac")
    if javac is None:
        raise JavaBuildError(
            "javac not found: freshet compiles its Flink operators at set-up and needs a JDK 17 "
            "(Debian: `apt-get install openjdk-17-jdk-headless`)"
        )
    return javac


def _javac_version(javac: str) -> str:
    done = subprocess.run([javac, "-version"], capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).strip()


def compile_classpath() -> list[Path]:
    """What the operators compile against: PyFlink's Flink distribution and the verified connector jars."""
    import pyflink

    home = Path(pyflink.__file__).resolve().parent
    return [*sorted((home / "lib").glob("*.jar")), *sorted((home / "opt").glob("flink-python-*.jar")),
            *connector.jar_paths()]  # fmt: skip


def ensure(source_dir: Path = SOURCE_DIR, target_dir: Path | None = None) -> Path | None:
    """Build the jar unless an up-to-date one is in place; ``None`` when there are no sources."""
    files = sources(source_dir)
    if not files:
        return None
    javac = _javac()
    want = fingerprint(files, source_dir, _javac_version(javac))
    jar = jar_path(target_dir)
    stamp = _stamp_path(jar)
    if jar.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
        return jar
    print(f"==> compiling {len(files)} Java source(s) into {jar}", file=sys.stderr)
    _build(javac, files, jar)
    stamp.write_text(want + "\n")
    return jar


def _build(javac: str, files: Sequence[Path], jar: Path) -> None:
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        classes = Path(tmp) / "classes"
        classpath = ":".join(str(p) for p in compile_classpath())
        command = [javac, "--release", JAVA_RELEASE, "-Xlint:all", "-Xlint:-serial", "-Xlint:-options",
                   "-encoding", "UTF-8", "-cp", classpath, "-d", str(classes), *map(str, files)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise JavaBuildError(f"javac failed:\n{(done.stdout + done.stderr)[-4000:]}")
        part = Path(tmp) / JAR_NAME
        # A jar is a zip with a manifest; `jar` ships with the JDK, which compiling already requires.
        subprocess.run([str(Path(javac).with_name("jar")), "--create", "--file", str(part), "-C", str(classes), "."],
                       check=True, capture_output=True)  # fmt: skip
        shutil.move(str(part), jar.with_name(f".{JAR_NAME}.part"))
        jar.with_name(f".{JAR_NAME}.part").replace(jar)


def jar_paths(source_dir: Path = SOURCE_DIR, target_dir: Path | None = None) -> list[Path]:
    """The up-to-date jar as a one-element list (empty without sources); raises saying how to build it."""
    files = sources(source_dir)
    if not files:
        return []
    jar = jar_path(target_dir)
    stamp = _stamp_path(jar)
    want = fingerprint(files, source_dir, _javac_version(_javac())) if shutil.which("javac") else None
    if not jar.is_file() or (want is not None and (not stamp.is_file() or stamp.read_text().strip() != want)):
        raise JavaBuildError(
            f"{jar} is missing or older than the sources in {source_dir}; run `./dev setup` "
            "(or `python -m flink_jobs.javaops ensure`) to compile freshet's Flink operators"
        )
    return [jar]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "ensure"
    if command == "ensure":
        jar = ensure()
        print(f"ok  {jar}" if jar else "ok  (no Java sources)", file=sys.stderr)
    elif command == "paths":
        print("\n".join(str(p) for p in jar_paths()))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
