"""``python -m bench.baselines [--quick]``: freshet against what users would pick instead, in one run.

    .venv/bin/python -m bench.baselines            # 1M items; P = 10/60/300 s; scaling 100k/1M/4M (~25 min)
    .venv/bin/python -m bench.baselines --quick    # 50k items; P = 2/5/10 s stand in; ~3 min smoke run

Writes ``bench/results/baselines.json`` (``baselines_quick.json`` with ``--quick``): flat keys, each with its
unit, prefixed by part (``freshness_<system>_``, ``feature_store_``, ``scaling_<items>_``) and ``ratio_`` for
the headline ratios; and one PNG per part beside it. Needs the ``bench`` extra (faiss-cpu, matplotlib, redis,
psutil) and Debian's redis-server (installed with apt-get when missing and running as root).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.baselines.feature_store import run_feature_store
from bench.baselines.freshness import RunConfig, SystemSpec, run_system
from bench.baselines.measure import in_child, machine
from bench.baselines.plots import plot_all
from bench.baselines.report import markdown_table, ratios
from bench.baselines.scaling import fits, run_size
from bench.baselines.stream import StreamConfig, build_stream, example_feature_set

RESULTS = Path(__file__).resolve().parent.parent / "results"
PARTS = ("freshness", "feature_store", "scaling")


def systems(quick: bool) -> list[tuple[SystemSpec, int]]:
    """Each system and the stream seconds it replays (a multiple of its period, so the last rebuild lands
    when the stream ends). ``--quick`` stands P = 2/5/10 s in for 10/60/300 s."""
    periods = (2, 5, 10) if quick else (10, 60, 300)
    short = 20 if quick else 120
    head = periods[1]

    def swap(kind: str, p: int) -> tuple[SystemSpec, int]:
        spec = SystemSpec(f"swap_{kind}_{p}s", f"{kind} rebuild+swap every {p} s", kind, float(p), 0.1)
        return spec, max(short, p)

    return [
        (SystemSpec("freshet_100ms", "freshet, apply every 0.1 s", "freshet", None, 0.1), short),
        (SystemSpec("freshet_1s", "freshet, apply every 1 s", "freshet", None, 1.0), short),
        swap("torch", periods[0]),
        swap("torch", head),
        swap("faiss", head),
        swap("torch", periods[2]),
    ]


def run_freshness(args: argparse.Namespace) -> dict[str, Any]:
    plan = systems(args.quick)
    longest = max(seconds for _, seconds in plan)
    stream = build_stream(StreamConfig(seconds=longest, rate_scale=args.rate_scale), example_feature_set())
    out: dict[str, Any] = {
        "freshness_items": args.items,
        "freshness_stream_seconds_max": longest,
        "freshness_rate_scale": args.rate_scale,
        "freshness_deltas_per_s": round(len(stream.records) / stream.seconds, 1),
        "freshness_delta_counts": json.dumps(stream.counts),
        "freshness_headline_period_s": plan[3][0].period_s,
        "freshness_systems": ",".join(spec.key for spec, _ in plan),
    }
    for spec, seconds in plan:
        config = RunConfig(items=args.items, stream_seconds=seconds)
        began = time.perf_counter()
        result = in_child(run_system, spec, config, stream.prefix(seconds))
        out |= {f"freshness_{spec.key}_{k}": v for k, v in result.items()}
        print(f"  {spec.label}: staleness p50 {result['staleness_p50_s']} s, p99 {result['staleness_p99_s']} s, "
              f"CPU {result['cpu_s_per_stream_min']} s/min ({time.perf_counter() - began:.0f} s)", flush=True)  # fmt: skip
    return out


def run_scaling(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"scaling_sizes": ",".join(str(n) for n in args.sizes)}
    skipped = []
    for items in args.sizes:
        if not fits(items):
            skipped.append(f"{items}: not enough free memory")
            continue
        try:
            result = in_child(run_size, items, args.scaling_queries)
        except Exception as exc:  # a size that dies (e.g. killed for memory) is reported, not fatal
            skipped.append(f"{items}: {type(exc).__name__}: {exc}")
            continue
        out |= {f"scaling_{items}_{k}": v for k, v in result.items()}
        print(f"  {items:,} items: query p99 {result['query_unfiltered_p99_ms']} ms, "
              f"apply {result['apply_rows_per_s_batch_10000']:,} rows/s", flush=True)  # fmt: skip
    out["scaling_skipped"] = "; ".join(skipped) or "none"
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, short periods (labelled quick)")
    parser.add_argument("--items", type=int, help="catalog items (default 1,000,000; 50,000 with --quick)")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="multiplies the synthetic feed's rates")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--note", default="", help="what else ran on the machine (recorded in the JSON)")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/baselines[_quick].json)")
    args = parser.parse_args(argv)
    args.items = args.items or (50_000 if args.quick else 1_000_000)
    args.sizes = [10_000, 50_000, 100_000] if args.quick else [100_000, 1_000_000, 4_000_000]
    args.requests = 200 if args.quick else 1_000
    args.scaling_queries = 30 if args.quick else 100
    args.out = args.out or RESULTS / ("baselines_quick.json" if args.quick else "baselines.json")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    # A subset run updates the keys of its parts in the existing results and keeps the others.
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() and len(parts) < 3 else {}
    results |= {"quick": args.quick, "note": args.note, **machine()}
    began = time.perf_counter()
    if "freshness" in parts:
        print("rebuild-and-swap vs freshet, same stream:", flush=True)
        results |= run_freshness(args)
    if "feature_store" in parts:
        print("feature-store lookup vs in-tensor features:", flush=True)
        results |= {
            f"feature_store_{k}": v for k, v in in_child(run_feature_store, args.items, args.requests).items()
        }
    if "scaling" in parts:
        print("scaling:", flush=True)
        results |= run_scaling(args)
    results["machine_loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    results["run_s"] = round(time.perf_counter() - began, 1)
    results |= ratios(results)
    keys = results.get("freshness_systems", "").split(",") if "freshness_systems" in results else []
    results["plots"] = ", ".join(
        plot_all(results, [k for k in keys if k], args.sizes, args.out.with_suffix(""))
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown_table(results))
    print(f"wrote {args.out} and {results['plots']}")


if __name__ == "__main__":
    main()
