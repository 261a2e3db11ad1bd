"""The README's first command, as a newcomer runs it (shortened): every component starts, figures appear,
everything it started is gone afterwards, and with ``--verify`` the replica equals a backfill of the raw
events the demo logged (late events included), by ``freshet verify``."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from freshet.cli import main as cli_main

ROOT = Path(__file__).parent.parent

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.http]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_demo_runs_the_whole_pipeline_verifies_and_cleans_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the printed commands name feature_defs relative to the repository root
    port, work = 8690, tmp_path / "demo"
    argv = [sys.executable, "-m", "freshet.cli", "demo", "--seconds", "25", "--history", "20",
            "--port", str(port), "--work-dir", str(work), "--rate", "200", "--verify"]  # fmt: skip
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "history applied" in out
    final = out[out.rindex("freshet demo: streaming") :]
    assert "│ status                     live" in final, final
    assert "p50 ≤" in final.split("freshness embedding", 1)[1].splitlines()[0], final
    share_line = final.split("same-day items in results", 1)[1].splitlines()[0]
    assert "%" in share_line, final
    assert "stopped: the broker, the Flink job and the replica are shut down" in out
    assert _port_free(port)

    backfill_argv = _printed_command(out, "freshet backfill")
    assert f"verify: equal (digest {_backfill_digest(backfill_argv, capsys)})" in out, out[-3000:]
    assert _late_events(work / "events" / "engagement") > 0, "the demo sent late events, and they matched"
    _tampered_log_differs(work, backfill_argv, capsys)


def _printed_command(out: str, prefix: str) -> list[str]:
    """The arguments of the command the demo printed as ``$ freshet ...`` (without ``freshet``)."""
    line = next(line for line in out.splitlines() if line.strip().startswith(f"$ {prefix}"))
    return shlex.split(line.strip()[2:])[1:]


def _backfill_digest(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Re-runs the printed backfill (into a new root) and returns its digest."""
    out = argv[argv.index("--out") + 1]
    rerun = [*argv]
    rerun[rerun.index("--out") + 1] = out + "-again"
    assert cli_main(rerun) == 0
    return str(json.loads(capsys.readouterr().out)["digest"])


def _late_events(directory: Path) -> int:
    """Engagement records behind the bounded-out-of-orderness watermark (5 s) of the records before them."""
    late, max_ts = 0, None
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                ts = json.loads(line)["ts"]
            except (ValueError, KeyError, TypeError):
                continue
            if not isinstance(ts, int) or ts < 10**12:
                continue
            late += max_ts is not None and ts <= max_ts - 5_001
            max_ts = ts if max_ts is None else max(max_ts, ts)
    return late


def _tampered_log_differs(work: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Dropping the last logged post gives a backfill that verify tells apart from the verified one."""
    events, tampered = work / "events", work / "tampered"
    subprocess.run(["cp", "-r", str(events), str(tampered)], check=True)
    posts = tampered / "items.published" / "part-000000.jsonl"
    lines = posts.read_bytes().splitlines(keepends=True)
    posts.write_bytes(b"".join(lines[:-1]))
    dropped = json.loads(lines[-1])["item_id"]
    rerun = [*argv]
    rerun[rerun.index("--events") + 1] = str(tampered)
    rerun[rerun.index("--out") + 1] = str(work / "backfill-tampered")
    assert cli_main(rerun) == 0
    capsys.readouterr()
    verified = argv[argv.index("--out") + 1]
    code = cli_main(
        ["verify", "--defs", argv[argv.index("--defs") + 1], verified, str(work / "backfill-tampered")]
    )
    report = capsys.readouterr().out
    assert code == 1, report
    assert report.startswith("differ:") and str(dropped) in report, report
