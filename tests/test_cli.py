"""The `freshet` command line as a user runs it: exit codes, messages, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from freshet.cli import main
from freshet.publish import load_published
from freshet.spec import load_feature_set

ROOT = Path(__file__).parent.parent
BAD = ROOT / "tests" / "fixtures" / "bad_defs"


def test_validate_the_example_definitions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "feature_defs")]) == 0
    layout = load_feature_set(ROOT / "feature_defs").layout()
    assert f"ok (layout {layout.layout_hash}" in capsys.readouterr().out


def test_validate_reports_every_problem_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    path = BAD / "many_problems.yaml"
    expected = [
        line.split("# expect: ", 1)[1] for line in path.read_text().splitlines() if "# expect: " in line
    ]
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.removeprefix(str(BAD) + "/") for line in err[:-1]] == expected
    assert err[-1] == f"{len(expected)} problem(s) found"


def test_schema_is_json_schema_that_names_the_sections(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"sources", "features", "embedding", "eligibility"} <= set(schema["properties"])


def test_model_publish_then_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    defs = str(ROOT / "feature_defs")
    args = ["--defs", defs, "--models", str(tmp_path)]
    assert main(["model", "publish", *args, "--pairs", "300", "--epochs", "1"]) == 0
    assert main(["model", "list", *args]) == 0
    out = capsys.readouterr().out
    assert "two_tower/v00000001" in out and "two_tower: v1" in out
    layout = load_feature_set(defs).layout()
    published = load_published(tmp_path / "two_tower" / "v00000001", layout_hash=layout.layout_hash, dim=64)
    assert published.version == 1


def test_entry_point_is_installed_and_fails_loudly_on_bad_input() -> None:
    exe = Path(sys.executable).with_name("freshet")
    result = subprocess.run(
        [exe, "validate", str(BAD / "unknown_source.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "unknown source" in result.stderr
