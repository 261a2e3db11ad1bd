"""Prometheus metrics of one replica, in the replica's own ``CollectorRegistry``.

A per-replica registry (not the process-global default) lets two replicas live in one process, as the
tests do. The freshness histograms are observed once per applied batch with numpy (one ``searchsorted``
per signal) instead of one ``Histogram.observe`` call per delta: a bootstrap replays millions of deltas,
and a Python call per delta would cost seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

#: seconds from event time to applied time; streaming freshness is seconds, replays can be hours
FRESHNESS_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600)
APPLY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
SIGNALS = ("embedding", "feature", "eligibility")


class VectorHistogram(Collector):
    """A labelled histogram that takes a whole array of observations at once."""

    def __init__(
        self, name: str, documentation: str, label: str, values: Sequence[str], buckets: Sequence[float]
    ):
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = {v: np.zeros(len(buckets) + 1, dtype=np.int64) for v in values}
        self._sums = dict.fromkeys(values, 0.0)
        self._lock = threading.Lock()

    def observe_many(self, label_value: str, observations: npt.ArrayLike) -> None:
        obs = np.asarray(observations, dtype=np.float64)
        if obs.size == 0:
            return
        # side="left": an observation equal to a bound falls in that bound's bucket (le is "<=")
        counts = np.bincount(np.searchsorted(self.bounds, obs, side="left"), minlength=len(self.bounds) + 1)
        with self._lock:
            self._counts[label_value] += counts
            self._sums[label_value] += float(obs.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            snapshot = {v: (c.cumsum(), self._sums[v]) for v, c in self._counts.items()}
        les = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        for value, (cumulative, total) in snapshot.items():
            family.add_metric([value], list(zip(les, (float(c) for c in cumulative), strict=True)), total)
        yield family


class ReplicaMetrics:
    """Every metric a replica exports; ``registry`` is what ``GET /metrics`` renders."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.records = Counter("freshet_delta_records", "delta topic records consumed", registry=r)
        self.applied = Counter("freshet_deltas_applied", "deltas applied to the model", registry=r)
        self.skipped_stale = Counter(
            "freshet_deltas_skipped_stale",
            "deltas not newer than the row's version (idempotent skip)",
            registry=r,
        )
        self.rejected = Counter(
            "freshet_deltas_rejected", "delta records refused, by reason", ["reason"], registry=r
        )
        self.apply_seconds = Histogram(
            "freshet_apply_batch_seconds",
            "decode + apply time of one batch",
            buckets=APPLY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "freshet_apply_batch_records",
            "records per applied batch",
            buckets=(1, 10, 100, 1000, 5000, 20000, 100000),
            registry=r,
        )
        self.lag = Gauge(
            "freshet_consumer_lag_records", "readable end offset - position", ["partition"], registry=r
        )
        self.applied_offset = Gauge(
            "freshet_applied_offset", "next delta topic offset to apply", ["partition"], registry=r
        )
        self.consumer_errors = Counter(
            "freshet_consumer_errors",
            "errors of the delta source (broker unreachable, ...)",
            ["kind"],
            registry=r,
        )
        self.freshness = VectorHistogram(
            "freshet_freshness_seconds",
            "applied wall time - event time of applied deltas, per signal",
            "signal",
            SIGNALS,
            FRESHNESS_BUCKETS_S,
        )
        r.register(self.freshness)
        self.newest_event_age = Gauge(
            "freshet_newest_applied_event_age_seconds",
            "now - event time of the newest applied delta",
            registry=r,
        )
        self.ready = Gauge("freshet_ready", "1 when the replica is caught up and serving", registry=r)
        self.items = Gauge("freshet_items", "items in the model", registry=r)
        self.snapshots_written = Counter("freshet_snapshots_written", "snapshots written", registry=r)
        self.snapshot_seconds = Histogram(
            "freshet_snapshot_seconds",
            "time to write one snapshot",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.snapshots_refused = Counter(
            "freshet_snapshots_refused",
            "snapshots skipped at load (corrupt, wrong layout, ...)",
            ["reason"],
            registry=r,
        )
        self.snapshot_errors = Counter("freshet_snapshot_errors", "failed snapshot writes", registry=r)
        self.model_version = Gauge("freshet_model_version", "model version of the active index", registry=r)
        self.model_switches = Counter(
            "freshet_model_switches", "model switches and rollbacks, by action", ["action"], registry=r
        )
        self.model_refused = Counter(
            "freshet_model_refused", "published model versions refused (checksum, layout, ...)", registry=r
        )

    def bind(
        self,
        *,
        newest_event_age_s: Callable[[], float],
        items: Callable[[], float],
        ready: Callable[[], float],
        model_version: Callable[[], float],
    ) -> None:
        """Gauges computed at scrape time from the replica's state."""
        self.newest_event_age.set_function(newest_event_age_s)
        self.items.set_function(items)
        self.ready.set_function(ready)
        self.model_version.set_function(model_version)

    def count_rejected(self, reasons: dict[str, int]) -> None:
        for reason, n in reasons.items():
            if n:
                self.rejected.labels(reason=reason).inc(n)
