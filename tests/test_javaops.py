"""The JVM operators' build: javac against PyFlink's Flink, one jar, rebuilt only when a source changes."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from flink_jobs import javaops

MAPPER = """\
package dev.freshet.test;

import org.apache.flink.api.common.functions.MapFunction;

/** Compiles only against Flink's API: proves the classpath. */
public final class Upper implements MapFunction<String, String> {
    @Override
    public String map(String value) {
        return value.toUpperCase(java.util.Locale.ROOT);
    }
}
"""


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    src = tmp_path / "java" / "dev" / "freshet" / "test"
    src.mkdir(parents=True)
    (src / "Upper.java").write_text(MAPPER)
    return tmp_path / "java"


def test_compiles_against_flink_into_one_jar(source_dir: Path, tmp_path: Path) -> None:
    jar = javaops.ensure(source_dir, tmp_path / "out")
    assert jar == tmp_path / "out" / javaops.JAR_NAME
    with zipfile.ZipFile(jar) as zf:
        assert "dev/freshet/test/Upper.class" in zf.namelist()
    assert javaops.jar_paths(source_dir, tmp_path / "out") == [jar]


def test_rebuilds_only_when_a_source_changes(source_dir: Path, tmp_path: Path) -> None:
    jar = javaops.ensure(source_dir, tmp_path / "out")
    assert jar is not None
    built = jar.stat().st_mtime_ns
    assert javaops.ensure(source_dir, tmp_path / "out") == jar
    assert jar.stat().st_mtime_ns == built
    (source_dir / "dev" / "freshet" / "test" / "Upper.java").write_text(MAPPER.replace("Upper", "Upper2", 1))
    with pytest.raises(javaops.JavaBuildError, match="older than the sources"):
        javaops.jar_paths(source_dir, tmp_path / "out")


def test_a_compile_error_names_the_file_and_keeps_the_old_jar(source_dir: Path, tmp_path: Path) -> None:
    jar = javaops.ensure(source_dir, tmp_path / "out")
    assert jar is not None
    (source_dir / "dev" / "freshet" / "test" / "Upper.java").write_text(MAPPER.replace("return", "retrun"))
    with pytest.raises(javaops.JavaBuildError, match=r"javac failed:[\s\S]*Upper\.java"):
        javaops.ensure(source_dir, tmp_path / "out")
    assert jar.is_file()


def test_no_sources_no_jar(tmp_path: Path) -> None:
    assert javaops.ensure(tmp_path / "none", tmp_path / "out") is None
    assert javaops.jar_paths(tmp_path / "none", tmp_path / "out") == []


def test_a_missing_jar_says_how_to_build_it(source_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(javaops.JavaBuildError, match=r"\./dev setup"):
        javaops.jar_paths(source_dir, tmp_path / "out")
