"""Delta job throughput and event → committed-delta latency, recorded in ``bench/results/job.json`` and
``job.png`` (events read over time, one line per run).

    python -m bench.job [--events 1000000] [--items 5000 50] [--partitions 1 2] [--window-operator jvm]

A thin wrapper over ``flink_jobs.throughput`` (the measurement lives beside the job it measures): it runs
the real job on the local MiniCluster against the embedded broker (exactly-once sinks, 1 s checkpoints), once per
item count and partition count of the engagement topic, and adds the machine's state (load average before and
after) to each result so numbers from a shared machine are read as such.

Why both partition counts: the embedded broker serves the job's Kafka source one partition to its end before the
next (the Java client's fetches; ``fetch.max.bytes`` does not change it), so over two partitions the watermark,
the least of the partitions', stays back until the second one is reached, every window of the first one's events
stays open until then, and then they all fire at once. Over one partition the windows fire as the events come,
as they do over many partitions read in turns from Apache Kafka.
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
    # a million events: the JIT compiler takes a third of the 2 cores for the first ~15 s of a job
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, nargs="+", default=[5_000, 50])
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--window-operator", choices=("jvm", "python"), default="jvm")
    args = parser.parse_args(argv)
    out = RESULTS / "job.json"
    runs = [_run(args.events, items, partitions, args.window_operator, out)
            for items in args.items for partitions in args.partitions]  # fmt: skip
    out.write_text(json.dumps({"runs": runs}, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    print(_plot(runs, RESULTS / "job.png"))
    return 0


def _run(events: int, items: int, partitions: int, window_operator: str, out: Path) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    argv = ["--events", str(events), "--items", str(items), "--partitions", str(partitions),
            "--window-operator", window_operator, "--out", str(out)]  # fmt: skip
    if throughput.main(argv) != 0:
        raise SystemExit(f"the measurement over {items} items failed")
    result: dict[str, object] = json.loads(out.read_text())
    return result | {
        "machine_cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def _plot(runs: list[dict[str, object]], path: Path) -> str:
    try:
        import matplotlib  # type: ignore[import-not-found]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    except ImportError:
        return "matplotlib not importable: no plot (pip install -e '.[bench]')"
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        seconds, read = zip(*run["read_over_time"], strict=True)  # type: ignore[call-overload]
        label = f"{run['items']:,} items, {run['partitions']} partition(s): {run['end_to_end_events_per_s']:,} ev/s"
        ax.plot(seconds, [r / 1e3 for r in read], label=label)
    ax.set_xlabel("seconds since the window operator read its first event")
    ax.set_ylabel("events read (thousands)")
    ax.set_title("delta job, Kafka → windows → exactly-once Kafka (embedded broker, 2 cores)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"wrote {path}"


if __name__ == "__main__":
    raise SystemExit(main())
