"""Fault soak: the fault-injection scenarios over many seeds, recorded in ``bench/results/faults.json``.

    python -m bench.faults [--runs 5] [--job-kills 2] [--first-seed 100]
    python -m bench.faults --quick          # one seed, one job kill: a check that the soak itself works

The scenarios are the fault tests themselves (``tests/test_faults.py``: real job on the MiniCluster, real
replica processes, embedded broker), run by pytest once per seed with more job kills than the test command
uses. Running them rather than importing them keeps one implementation of each scenario, and bench imports
nothing from ``tests/``. Each run appends its figures (seed, kills, kill times, rows wrong, duration, passed)
to a file the tests write when ``FRESHET_FAULT_FIGURES`` is set; this collects them, adds the machine's load
average, sampled every 15 s (the machine is shared: read durations with it), and sums kills and rows wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults")
    parser.add_argument("--runs", type=int, default=5, help="seeds; each runs every scenario once")
    parser.add_argument("--job-kills", type=int, default=2, help="job kills in round one of scenario (a)")
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="one seed, one job kill")
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    args = parser.parse_args(argv)
    runs, kills = (1, 1) if args.quick else (args.runs, args.job_kills)
    seeds = list(range(args.first_seed, args.first_seed + runs))
    result = soak(seeds, kills)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out}")
    return 0 if result["summary"]["failed_runs"] == 0 else 1


def soak(seeds: list[int], job_kills: int) -> dict[str, Any]:
    """Run the fault tests once per seed; their per-run figures, a summary, and the load during the soak."""
    loads: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_load, args=(loads, stop), daemon=True)
    with tempfile.TemporaryDirectory(prefix="freshet-faults-") as tmp:
        figures_file = Path(tmp) / "figures.jsonl"
        env = {**os.environ, "FRESHET_FAULT_SEEDS": ",".join(map(str, seeds)),
               "FRESHET_FAULT_JOB_KILLS": str(job_kills), "FRESHET_FAULT_FIGURES": str(figures_file)}  # fmt: skip
        sampler.start()
        start = time.monotonic()
        code = subprocess.call([sys.executable, "-m", "pytest", "tests/test_faults.py", "-q", "-p",
                                "no:cacheprovider", "--basetemp", str(Path(tmp) / "t")], cwd=ROOT, env=env)  # fmt: skip
        wall_s = time.monotonic() - start
        stop.set()
        runs = (
            [json.loads(line) for line in figures_file.read_text().splitlines()]
            if figures_file.exists()
            else []
        )
    return {"runs": runs, "summary": summarize(runs, seeds, job_kills, code, wall_s, loads)}


def summarize(runs: list[dict[str, Any]], seeds: list[int], job_kills: int, pytest_code: int, wall_s: float,
              loads: list[float]) -> dict[str, Any]:  # fmt: skip
    """Totals over the runs: how many, how many kills, rows wrong, failures; the machine and its load.

    >>> a = {"scenario": "a", "passed": True, "job_kills": 2, "replica_kills": 1, "rows_wrong_a": 0, "duration_s": 9}
    >>> b = {"scenario": "b", "passed": True, "replica_kills": 2, "digest_equal": False, "duration_s": 3}
    >>> s = summarize([a, b], [1], 1, 1, 12.0, [2.0, 4.0])
    >>> s["runs"], s["kills"], s["rows_wrong"], s["failed_runs"], s["load_average_1m"]["mean"]
    (2, 5, 0, 1, 3.0)
    """
    return {
        "seeds": seeds,
        "job_kills_in_round_one": job_kills,
        "runs": len(runs),
        "runs_by_scenario": {
            s: sum(r["scenario"] == s for r in runs) for s in sorted({r["scenario"] for r in runs})
        },
        "kills": sum(r.get("job_kills", 0) + r.get("replica_kills", 0) for r in runs),
        "job_kills": sum(r.get("job_kills", 0) for r in runs),
        "replica_kills": sum(r.get("replica_kills", 0) for r in runs),
        "rows_wrong": sum(v for r in runs for k, v in r.items() if k.startswith("rows_wrong") and v),
        "digest_mismatches": sum(r.get("digest_equal") is False for r in runs),
        # a run that never wrote its figures (the test crashed before) counts as failed
        "failed_runs": sum(not r["passed"] or r.get("digest_equal") is False for r in runs)
        + (len(seeds) * 2 - len(runs)),
        "pytest_exit_code": pytest_code,
        "wall_s": round(wall_s, 1),
        "mean_run_s": round(sum(r["duration_s"] for r in runs) / len(runs), 1) if runs else None,
        "machine_cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_1m": _stats(loads),
    }


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 2),
        "mean": round(sum(values) / len(values), 2),
        "max": round(max(values), 2),
    }


def _sample_load(loads: list[float], stop: threading.Event) -> None:
    while True:
        loads.append(os.getloadavg()[0])
        if stop.wait(15):
            return


if __name__ == "__main__":
    raise SystemExit(main())
