"""Delta job throughput and event → committed-delta latency, recorded in ``bench/results/job.json``.

    python -m bench.job [--events 20000] [--items 5000]

A thin wrapper over ``flink_jobs.throughput`` (the measurement lives beside the job it measures): it runs
the real job on the local MiniCluster against the embedded broker, and adds the machine's state to the
result so numbers from a shared machine are read as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from flink_jobs import throughput

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.job")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    args = parser.parse_args(argv)
    out = RESULTS / "job.json"
    load_before = os.getloadavg()[0]
    rc = throughput.main(["--events", str(args.events), "--items", str(args.items), "--out", str(out)])
    result = json.loads(out.read_text())
    result |= {
        "machine_cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
