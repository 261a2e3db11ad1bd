"""Headline ratios from the flat results, and the markdown table the README section is made from."""

from __future__ import annotations

from typing import Any

REFERENCE = "freshet_100ms"


def _swaps(r: dict[str, Any]) -> list[str]:
    return [s for s in str(r.get("freshness_systems", "")).split(",") if s.startswith("swap_")]


def _div(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def ratios(r: dict[str, Any]) -> dict[str, Any]:
    """``ratio_*`` (baseline over freshet: above 1 favours freshet) and the verdicts."""
    out: dict[str, Any] = {}
    f = f"freshness_{REFERENCE}_"
    for s in _swaps(r):
        b = f"freshness_{s}_"
        for metric in ("staleness_p50_s", "staleness_p99_s", "cpu_s_per_stream_min", "peak_rss_over_idle_mb"):
            out[f"ratio_{s}_over_freshet_{metric}"] = _div(r.get(b + metric), r.get(f + metric))
    head = r.get("freshness_headline_period_s")
    if head is not None:
        out |= _verdicts(r, f"swap_torch_{int(head)}s")
    fs = "feature_store_"
    if fs + "items" in r:
        for q in ("p50", "p99"):
            out[f"ratio_feature_store_over_freshet_request_{q}_ms"] = _div(
                r[f"{fs}feature_store_request_{q}_ms"], r[f"{fs}freshet_request_{q}_ms"]
            )
        out["ratio_freshet_over_feature_store_requests_per_s"] = _div(
            r[f"{fs}freshet_requests_per_s"], r[f"{fs}feature_store_requests_per_s"]
        )
    return out


def _verdicts(r: dict[str, Any], baseline: str) -> dict[str, Any]:
    """Per freshet configuration: is its staleness (p50 and p99) at least 10x lower than the headline
    baseline's, at no more update CPU?"""
    out: dict[str, Any] = {"verdict_baseline": baseline}
    b = f"freshness_{baseline}_"
    for f in [s for s in str(r["freshness_systems"]).split(",") if s.startswith("freshet_")]:
        p = f"freshness_{f}_"
        stale = min(_div(r[b + f"staleness_{q}_s"], r[p + f"staleness_{q}_s"]) or 0 for q in ("p50", "p99"))
        cpu = _div(r[b + "cpu_s_per_stream_min"], r[p + "cpu_s_per_stream_min"]) or 0
        out[f"verdict_{f}_staleness_times_lower_min_of_p50_p99"] = stale
        out[f"verdict_{f}_baseline_cpu_over_freshet_cpu"] = cpu
        out[f"verdict_{f}_meets_10x_at_no_more_cpu"] = stale >= 10 and cpu >= 1
    return out


def markdown_table(r: dict[str, Any]) -> str:
    """The comparison as the README shows it."""
    lines = []
    if "freshness_systems" in r:
        lines += [
            "| system | staleness p50 / p99 | × freshet (p99) | update CPU s/min | peak MB over idle | query p99 ms (idle → during rebuild/apply) |",
            "|---|---|---|---|---|---|",
        ]  # fmt: skip
        for s in str(r["freshness_systems"]).split(","):
            p = f"freshness_{s}_"
            during = r.get(p + "query_during_rebuild_p99_ms", r.get(p + "query_during_apply_p99_ms"))
            times = r.get(f"ratio_{s}_over_freshet_staleness_p99_s") if s.startswith("swap_") else 1
            lines.append(
                f"| {r[p + 'label']} | {r[p + 'staleness_p50_s']:.2f} s / {r[p + 'staleness_p99_s']:.2f} s | "
                f"{times}× | {r[p + 'cpu_s_per_stream_min']:.2f} | {r[p + 'peak_rss_over_idle_mb']:.0f} | "
                f"{r[p + 'query_p99_ms']:.1f} → {f'{during:.1f}' if during is not None else '–'} |"
            )
    if "feature_store_items" in r:
        fs = "feature_store_"
        lines += [
            "",
            "| 100 candidates per request | p50 ms | p99 ms | requests/s |",
            "|---|---|---|---|",
            f"| faiss candidates + Redis HMGET join + scoring | {r[fs + 'feature_store_request_p50_ms']:.1f} | "
            f"{r[fs + 'feature_store_request_p99_ms']:.1f} | {r[fs + 'feature_store_requests_per_s']:.0f} |",
            f"| (the Redis join + scoring alone) | {r[fs + 'feature_store_join_p50_ms']:.1f} | "
            f"{r[fs + 'feature_store_join_p99_ms']:.1f} | |",
            f"| freshet `retrieve` (features in the tensors) | {r[fs + 'freshet_request_p50_ms']:.1f} | "
            f"{r[fs + 'freshet_request_p99_ms']:.1f} | {r[fs + 'freshet_requests_per_s']:.0f} |",
        ]
    sizes = [s for s in str(r.get("scaling_sizes", "")).split(",") if f"scaling_{s}_items" in r]
    if sizes:
        lines += ["", "| items | query p99 ms (unfiltered / filtered) | apply rows/s | bytes/item (RSS) | one rebuild s (torch / faiss) |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for s in sizes:
            p = f"scaling_{s}_"
            lines.append(
                f"| {int(s):,} | {r[p + 'query_unfiltered_p99_ms']:.1f} / {r[p + 'query_filtered_p99_ms']:.1f} | "
                f"{r[p + 'apply_rows_per_s_batch_10000']:,} | {r[p + 'rss_bytes_per_item']:.0f} | "
                f"{r[p + 'rebuild_torch_s']:.2f} / {r[p + 'rebuild_faiss_s']:.2f} |"
            )
    return "\n".join(lines)
