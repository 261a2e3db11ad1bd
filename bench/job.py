"""Delta job throughput and event → committed-delta latency, recorded in ``bench/results/job.json``.

    python -m bench.job [--events 200000] [--items 5000 50] [--window-operator jvm]

A thin wrapper over ``flink_jobs.throughput`` (the measurement lives beside the job it measures): it runs
the real job on the local MiniCluster against the embedded broker (exactly-once sinks, 1 s checkpoints), once per
item count, and adds the machine's state (load average before and after) to each result so numbers from a shared
machine are read as such.
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
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--items", type=int, nargs="+", default=[5_000, 50])
    parser.add_argument("--window-operator", choices=("jvm", "python"), default="jvm")
    args = parser.parse_args(argv)
    out = RESULTS / "job.json"
    runs = [_run(args.events, items, args.window_operator, out) for items in args.items]
    out.write_text(json.dumps({"runs": runs}, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


def _run(events: int, items: int, window_operator: str, out: Path) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    argv = [
        "--events",
        str(events),
        "--items",
        str(items),
        "--window-operator",
        window_operator,
        "--out",
        str(out),
    ]
    if throughput.main(argv) != 0:
        raise SystemExit(f"the measurement over {items} items failed")
    result: dict[str, object] = json.loads(out.read_text())
    return result | {
        "machine_cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    raise SystemExit(main())
