"""Rebuild-and-swap vs freshet on one stream: staleness, update CPU, peak memory, query latency.

Each system runs alone in its own process (``measure.in_child``), so its CPU and peak memory are its
own, and replays the same stream in real time. Four threads, one intra-op thread each (torch and faiss
set to one thread, so a thread's CPU clock holds all the work it starts):

* **ingest**: every ``apply_interval_s`` takes the deltas that have arrived, decodes them
  (``decode_batch``, as a replica does) and hands them to the system: freshet applies them, the baseline
  writes them to its latest state;
* **rebuild** (baseline only): at every multiple of ``period_s`` builds a new index from the latest state
  and swaps it in;
* **probe**: every ``probe_interval_s`` one query along the probe channels (see ``stream``) reads which
  probe deltas the served index shows; the first probe that shows a delta (or a newer one of the same
  cell) makes it visible, and its staleness is that probe's start minus the delta's arrival;
* **users**: ``user_qps`` paced top-100 queries with random unit vectors, timed.

Update CPU is the ingest and rebuild threads' CPU clocks (``time.thread_time``): what keeping the index
fresh costs, queries excluded. Peak memory is the kernel's high-water mark of the process's resident set
(``VmHWM``), reset (``/proc/self/clear_refs``) once the system is built, so it covers the stream only.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bench.baselines.measure import (
    Percentiles,
    one_intra_op_thread,
    overlapping,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
)
from bench.baselines.stream import (
    MARKER_FIRST_ID,
    MARKERS,
    NEW_PROBE_FIRST_ID,
    NEWEST,
    PROBE_COLUMN,
    Stream,
    catalog_state,
    example_feature_set,
    probe_query,
    unit_vectors,
)
from bench.baselines.systems import Freshet, RebuildAndSwap, System
from freshet.deltas import decode_batch

USER_K = 100


@dataclass(frozen=True)
class SystemSpec:
    """One system of the comparison: freshet (``period_s`` None) or rebuild-and-swap every ``period_s``."""

    key: str
    label: str
    index_kind: str  # "freshet", "torch" or "faiss"
    period_s: float | None
    apply_interval_s: float


@dataclass(frozen=True)
class RunConfig:
    items: int
    stream_seconds: int
    probe_interval_s: float = 0.1
    user_qps: float = 10.0
    seed: int = 0


@dataclass
class Timeline:
    """What the threads saw, in seconds since the stream started."""

    probe_t: list[float]
    marker_values: list[npt.NDArray[np.float32]]
    newest_probe: list[int]
    probe_gaps: int
    query_spans: list[tuple[float, float]]
    busy_spans: list[tuple[float, float]]  # applies (freshet) or rebuilds (baseline)
    ingest_cpu_s: float = 0.0
    rebuild_cpu_s: float = 0.0
    deltas: int = 0
    ingests: int = 0
    rebuilds: int = 0


def run_system(spec: SystemSpec, config: RunConfig, stream: Stream) -> dict[str, Any]:
    """Replay ``stream`` into the system of ``spec``; returns its flat measurements (unprefixed)."""
    one_intra_op_thread()
    feature_set = example_feature_set()
    layout = feature_set.layout()
    catalog = catalog_state(feature_set, config.items, stream.new_items + 1024, config.seed)
    system: System = (
        Freshet(layout, catalog)
        if spec.index_kind == "freshet"
        else RebuildAndSwap(layout, catalog, spec.index_kind)
    )
    del catalog
    gc.collect()
    idle_rss = rss_bytes()
    reset_peak_rss()
    cpu_start = time.process_time()
    timeline = _Replay(spec, config, stream, system).run()
    process_cpu_s = time.process_time() - cpu_start
    out = _summary(spec, config, stream, timeline)
    out |= {
        "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
        "idle_rss_mb": round(idle_rss / 2**20, 1),
        "peak_rss_over_idle_mb": round((peak_rss_bytes() - idle_rss) / 2**20, 1),
        "index_bytes_at_end": system.resident_bytes(),
        "process_cpu_s_per_stream_min": round(process_cpu_s / (stream.seconds / 60), 3),
    }
    return out


class _Replay:
    def __init__(self, spec: SystemSpec, config: RunConfig, stream: Stream, system: System) -> None:
        self.spec, self.config, self.stream, self.system = spec, config, stream, system
        self.layout = example_feature_set().layout()
        self.probe_column = [c.name for c in self.layout.feature_columns].index(PROBE_COLUMN)
        self.t: Timeline = Timeline([], [], [], 0, [], [])
        self.done = threading.Event()
        self.stream_end_s = stream.seconds
        self.start = 0.0
        self.ingested_s = 0.0  # every delta that arrived before this has been ingested

    def now(self) -> float:
        return time.perf_counter() - self.start

    def run(self) -> Timeline:
        workers: list[Callable[[], None]] = [self._ingest, self._probe, self._users]
        if self.spec.period_s is not None:
            workers.append(self._rebuilds)
        threads = [threading.Thread(target=w, name=w.__name__) for w in workers]
        self.start = time.perf_counter() + 0.2
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.t

    def _sleep_until(self, at_s: float) -> None:
        self.done.wait(max(0.0, at_s - self.now()))  # wakes at once when the run ends

    def _ingest(self) -> None:
        arrival, records, i, tick = self.stream.arrival_s, self.stream.records, 0, 0
        while i < len(records) and not self.done.is_set():
            tick += 1
            self._sleep_until(tick * self.spec.apply_interval_s)
            polled = self.now()
            j = int(np.searchsorted(arrival, polled, side="right"))
            if j <= i:
                self.ingested_s = polled
                continue
            began, cpu = self.now(), time.thread_time()
            self.system.ingest(decode_batch(records[i:j], self.layout))
            self.t.ingest_cpu_s += time.thread_time() - cpu
            if self.spec.period_s is None:
                self.t.busy_spans.append((began, self.now()))
            self.t.deltas += j - i
            self.t.ingests += 1
            self.ingested_s, i = polled, j
        self.ingested_s = float("inf")

    def _rebuilds(self) -> None:
        assert self.spec.period_s is not None and isinstance(self.system, RebuildAndSwap)
        at = self.spec.period_s
        while not self.done.is_set():
            self._sleep_until(at)
            if self.done.is_set():
                break
            while self.ingested_s < at and not self.done.is_set():
                time.sleep(0.005)  # the cut at ``at`` holds every delta that arrived before ``at``
            began, cpu = self.now(), time.thread_time()
            self.system.rebuild()
            self.t.rebuild_cpu_s += time.thread_time() - cpu
            self.t.rebuilds += 1
            self.t.busy_spans.append((began, self.now()))
            at += self.spec.period_s

    def _probe(self) -> None:
        query = torch.from_numpy(probe_query(self.layout.embedding_dim))
        last_marker, last_new, tick = 0, 0, 0
        deadline = self.stream_end_s + (self.spec.period_s or 0.0) + 30.0
        while True:
            tick += 1
            self._sleep_until(tick * self.config.probe_interval_s)
            began = self.now()
            ids, features = self.system.query(query, MARKERS + NEWEST)
            markers = np.zeros(MARKERS, np.float32)
            is_marker = (ids >= MARKER_FIRST_ID) & (ids < MARKER_FIRST_ID + MARKERS)
            markers[ids[is_marker] - MARKER_FIRST_ID] = features[is_marker, self.probe_column]
            new = np.sort(ids[ids >= NEW_PROBE_FIRST_ID] - NEW_PROBE_FIRST_ID)[::-1]
            newest = int(new[0]) if new.shape[0] else 0
            if new.shape[0] > 1 and (np.diff(new) != -1).any():
                self.t.probe_gaps += 1  # the newest visible probe items are not consecutive: a torn view
            self.t.probe_t.append(began)
            self.t.marker_values.append(markers)
            self.t.newest_probe.append(newest)
            last_marker, last_new = int(markers.max(initial=0)), newest
            caught_up = last_marker >= len(self.stream.marker_seq) and last_new >= len(
                self.stream.new_item_seq
            )
            if (began > self.stream_end_s and caught_up) or began > deadline:
                self.done.set()
                return

    def _users(self) -> None:
        rng = np.random.default_rng(self.config.seed + 1)
        queries = torch.from_numpy(unit_vectors(rng, 256, self.layout.embedding_dim))
        i = 0
        while not self.done.is_set():
            i += 1
            self._sleep_until(i / self.config.user_qps)
            began = self.now()
            self.system.query(queries[i % len(queries)], USER_K)
            self.t.query_spans.append((began, self.now()))


def _summary(spec: SystemSpec, config: RunConfig, stream: Stream, t: Timeline) -> dict[str, Any]:
    probe_t = np.array(t.probe_t)
    markers = np.maximum.accumulate(np.stack(t.marker_values), axis=0)
    regressions = int((np.stack(t.marker_values) < markers).sum())
    marker_stale = np.array([
        _first_visible(probe_t, markers[:, m], s) - a
        for m, s, a in zip(stream.marker_index, stream.marker_seq, stream.marker_arrival_s, strict=True)
    ])  # fmt: skip
    newest = np.maximum.accumulate(np.array(t.newest_probe))
    new_stale = np.array([
        _first_visible(probe_t, newest, s) - a
        for s, a in zip(stream.new_item_seq, stream.new_item_arrival_s, strict=True)
    ])  # fmt: skip
    both = np.concatenate([marker_stale, new_stale])
    seen = both[np.isfinite(both)]
    spans = np.array(t.query_spans)
    latency_ms = (spans[:, 1] - spans[:, 0]) * 1e3
    during = overlapping(spans, np.array(t.busy_spans).reshape(-1, 2))
    busy = "rebuild" if spec.period_s is not None else "apply"
    stream_min = stream.seconds / 60
    # Steady state: the mean rebuild's CPU once per period (how many rebuilds fall inside one finite run
    # depends on where it starts and ends).
    rebuild_per_min = (
        t.rebuild_cpu_s / t.rebuilds * 60 / spec.period_s if spec.period_s and t.rebuilds else 0.0
    )
    cpu_s = t.ingest_cpu_s + rebuild_per_min * stream_min
    return {
        "label": spec.label,
        "rebuild_period_s": spec.period_s,
        "apply_interval_s": spec.apply_interval_s,
        "stream_s": round(stream.seconds, 1),
        "deltas": t.deltas,
        "probes_measured": int(seen.shape[0]),
        "probes_never_visible": int((~np.isfinite(both)).sum()),
        "probe_visibility_regressions": regressions + t.probe_gaps,
        **Percentiles.of(seen, "staleness", "s", (50, 99, 100)),
        **Percentiles.of(marker_stale[np.isfinite(marker_stale)], "staleness_feature", "s", (50, 99)),
        **Percentiles.of(new_stale[np.isfinite(new_stale)], "staleness_new_item", "s", (50, 99)),
        "cpu_s_per_stream_min": round(cpu_s / stream_min, 3),
        "ingest_cpu_s_per_stream_min": round(t.ingest_cpu_s / stream_min, 3),
        "rebuild_cpu_s_per_stream_min": round(rebuild_per_min, 3),
        "rebuild_cpu_s_mean": round(t.rebuild_cpu_s / max(t.rebuilds, 1), 3),
        "ingests": t.ingests,
        "ingest_cpu_ms_per_call": round(t.ingest_cpu_s / max(t.ingests, 1) * 1e3, 3),
        "ingest_cpu_us_per_delta": round(t.ingest_cpu_s / max(t.deltas, 1) * 1e6, 2),
        f"{busy}s": len(t.busy_spans),
        f"{busy}_s_mean": round(float(np.mean([b - a for a, b in t.busy_spans] or [0])), 4),
        "queries": int(latency_ms.shape[0]),
        **Percentiles.of(latency_ms, "query", "ms", (50, 99)),
        f"queries_during_{busy}": int(during.sum()),
        **Percentiles.of(latency_ms[during], f"query_during_{busy}", "ms", (50, 99)),
    }


def _first_visible(probe_t: npt.NDArray[np.float64], visible: npt.NDArray[Any], seq: int) -> float:
    """Start time of the first probe whose (running-max) visible sequence reaches ``seq``; inf if none."""
    i = int(np.searchsorted(visible, seq, side="left"))
    return float(probe_t[i]) if i < probe_t.shape[0] else float("inf")
