"""One PNG per comparison (matplotlib's Agg backend), drawn from the flat results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_all(results: dict[str, Any], systems: list[str], sizes: list[int], stem: Path) -> list[str]:
    """Draw every figure whose numbers are in ``results``; returns the file names written."""
    try:
        plt = _pyplot()
    except ImportError:
        return ["matplotlib not importable: no plots (pip install -e '.[bench]')"]
    written = []
    for suffix, draw, needed in (
        ("freshness", lambda: _freshness(plt, results, systems), systems),
        (
            "feature_store",
            lambda: _feature_store(plt, results),
            ["feature_store_items"] if "feature_store_items" in results else [],
        ),
        ("scaling", lambda: _scaling(plt, results, sizes), sizes),
    ):
        if not needed:
            continue
        fig = draw()
        path = stem.with_name(f"{stem.name}_{suffix}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def _freshness(plt: Any, r: dict[str, Any], systems: list[str]) -> Any:
    labels = [r[f"freshness_{s}_label"].replace(" every ", "\nevery ") for s in systems]
    x = np.arange(len(systems))
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.6))
    for offset, q in ((-0.2, "p50"), (0.2, "p99")):
        axes[0].bar(x + offset, [r[f"freshness_{s}_staleness_{q}_s"] for s in systems], 0.4, label=q)
    axes[0].set(yscale="log", ylabel="seconds (log)", title="staleness: delta arrives → first query shows it")
    ingest = [r[f"freshness_{s}_ingest_cpu_s_per_stream_min"] for s in systems]
    rebuild = [r[f"freshness_{s}_rebuild_cpu_s_per_stream_min"] for s in systems]
    axes[1].bar(x, ingest, label="ingest (decode + apply / state write)")
    axes[1].bar(x, rebuild, bottom=ingest, label="rebuild")
    axes[1].set(ylabel="CPU s per minute of stream", title="CPU to keep the index fresh")
    axes[1].set_ylim(0, 1.15 * max(i + b for i, b in zip(ingest, rebuild, strict=True)))
    axes[2].bar(x, [r[f"freshness_{s}_peak_rss_over_idle_mb"] for s in systems], color="tab:purple")
    axes[2].set(ylabel="MB", title="peak resident memory above idle")
    for offset, (what, name) in (
        (-0.2, ("all queries", "query_p99_ms")),
        (0.2, ("during rebuild / apply", None)),
    ):
        values = [r.get(f"freshness_{s}_{name}") if name else _during(r, s) for s in systems]
        axes[3].bar(x + offset, [v or 0 for v in values], 0.4, label=what)
    axes[3].set(ylabel="ms", title="user query p99 (top-100)")
    for ax in axes:
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(_inputs(r), fontsize=9)
    fig.tight_layout()
    return fig


def _during(r: dict[str, Any], s: str) -> float | None:
    value = r.get(
        f"freshness_{s}_query_during_rebuild_p99_ms", r.get(f"freshness_{s}_query_during_apply_p99_ms")
    )
    return float(value) if value is not None else None


def _feature_store(plt: Any, r: dict[str, Any]) -> Any:
    p = "feature_store_"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    names = [
        "faiss candidates\n+ Redis join + scoring",
        "the Redis join\n+ scoring alone",
        "freshet retrieve\n(in-tensor features)",
    ]
    keys = ["feature_store_request", "feature_store_join", "freshet_request"]
    x = np.arange(len(keys))
    for offset, q in ((-0.2, "p50"), (0.2, "p99")):
        left.bar(x + offset, [r[f"{p}{k}_{q}_ms"] for k in keys], 0.4, label=q)
    left.set_xticks(x, names, fontsize=8)
    left.set(
        ylabel="ms",
        title=f"request latency, {r[p + 'candidates_per_request']} candidates, {r[p + 'items']:,} items",
    )
    left.legend(fontsize=8)
    right.bar(
        [0, 1],
        [r[p + "feature_store_requests_per_s"], r[p + "freshet_requests_per_s"]],
        color=["tab:gray", "tab:green"],
    )
    right.set_xticks([0, 1], [names[0], names[2]], fontsize=8)
    right.set(ylabel="requests/s (one client, closed loop)", title="throughput")
    fig.tight_layout()
    return fig


def _scaling(plt: Any, r: dict[str, Any], sizes: list[int]) -> Any:
    done = [n for n in sizes if f"scaling_{n}_query_unfiltered_p99_ms" in r]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for label in ("unfiltered", "filtered"):
        axes[0].plot(
            done, [r[f"scaling_{n}_query_{label}_p99_ms"] for n in done], "o-", label=f"freshet {label}"
        )
    axes[0].set(title="query p99 (top-100)", ylabel="ms")
    axes[1].plot(done, [r[f"scaling_{n}_apply_rows_per_s_batch_10000"] / 1e6 for n in done], "o-")
    axes[1].set(title="apply throughput (10k-row batches)", ylabel="M rows/s", ylim=(0, None))
    axes[2].plot(done, [r[f"scaling_{n}_rss_bytes_per_item"] for n in done], "o-", label="replica RSS")
    axes[2].plot(done, [r[f"scaling_{n}_model_bytes_per_item"] for n in done], "s--", label="model buffers")
    axes[2].set(title="memory per item", ylabel="bytes", ylim=(0, None))
    for name in ("torch", "faiss"):
        axes[3].plot(done, [r[f"scaling_{n}_rebuild_{name}_s"] for n in done], "o-", label=f"{name} rebuild")
    axes[3].set(title="one rebuild of the swap baseline", ylabel="seconds")
    for ax in axes:
        ax.set(xscale="log", xlabel="items")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _inputs(r: dict[str, Any]) -> str:
    return (f"{r['freshness_items']:,} catalog items, {r['freshness_deltas_per_s']:.0f} deltas/s, "
            f"{r['machine_cores']} cores ({r['machine_cpu']}), {'quick run' if r['quick'] else 'full run'}")  # fmt: skip
