"""The README's first command, as a newcomer runs it (shortened): every component starts, figures appear,
and everything it started is gone afterwards."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.http]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_demo_runs_the_whole_pipeline_and_cleans_up(tmp_path: Path) -> None:
    port = 8690
    argv = [sys.executable, "-m", "freshet.cli", "demo", "--seconds", "25", "--history", "20",
            "--port", str(port), "--work-dir", str(tmp_path / "demo"), "--rate", "200"]  # fmt: skip
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=420)
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
