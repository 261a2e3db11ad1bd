"""The demo's live terminal view: figures scraped from the replica's /metrics, drawn with rich."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.panel import Panel
from rich.table import Table

SIGNALS = ("embedding", "feature", "eligibility")
SPARK = "▁▂▃▄▅▆▇█"


@dataclass
class Scrape:
    """One reading of the replica's metrics: counters by name and labels, histogram buckets per signal."""

    at_s: float
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    @classmethod
    def parse(cls, at_s: float, text: str) -> Scrape:
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return cls(at_s, samples)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` (a counter's ``_total`` sample included) matching ``labels``."""
        want = set(labels.items())
        names = {name, f"{name}_total"}
        return sum(v for (n, ls), v in self.samples.items() if n in names and want <= set(ls))

    def buckets(self, name: str, signal: str) -> list[tuple[float, float]]:
        """``(upper bound, cumulative count)`` of one signal's histogram, ascending."""
        out = [
            (float(dict(ls)["le"]), v)
            for (n, ls), v in self.samples.items()
            if n == f"{name}_bucket" and dict(ls).get("signal") == signal
        ]
        return sorted(out)


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Upper bound of the bucket holding the ``q`` quantile (Prometheus-style, no interpolation).

    >>> quantile([(0.1, 5.0), (1.0, 9.0), (float("inf"), 10.0)], 0.5)
    0.1
    >>> quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    True
    """
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return None


def window_buckets(
    new: list[tuple[float, float]], old: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Bucket counts observed between two scrapes."""
    before = dict(old)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in new]


@dataclass
class DemoState:
    """What the view shows; filled by the demo loop."""

    links: Mapping[str, str]
    scrapes: deque[Scrape] = field(default_factory=lambda: deque(maxlen=30))
    events_sent: int = 0
    events_rate: float = 0.0
    dlq: int = 0
    late: int = 0
    same_day_share: deque[float] = field(default_factory=lambda: deque(maxlen=60))
    status: str = "starting"


def _rate(state: DemoState, name: str) -> float:
    if len(state.scrapes) < 2:
        return 0.0
    old, new = state.scrapes[max(0, len(state.scrapes) - 6)], state.scrapes[-1]
    span = new.at_s - old.at_s
    return (new.total(name) - old.total(name)) / span if span > 0 else 0.0


def _freshness(state: DemoState, signal: str) -> str:
    if len(state.scrapes) < 2:
        return "-"
    old, new = state.scrapes[max(0, len(state.scrapes) - 11)], state.scrapes[-1]
    name = "freshet_freshness_seconds"
    window = window_buckets(new.buckets(name, signal), old.buckets(name, signal))
    p50, p99 = quantile(window, 0.5), quantile(window, 0.99)
    if p50 is None or p99 is None:
        return "no deltas in the last 10 s"
    return f"p50 ≤ {_secs(p50)}   p99 ≤ {_secs(p99)}"


def _secs(v: float) -> str:
    return "∞" if v == float("inf") else f"{v:g} s"


def _spark(values: deque[float]) -> str:
    return "".join(SPARK[min(len(SPARK) - 1, int(v * (len(SPARK) - 1) + 0.5))] for v in values)


def render(state: DemoState) -> Group:
    """The whole view as one renderable."""
    figures = Table.grid(padding=(0, 2))
    figures.add_column(style="bold")
    figures.add_column()
    last = state.scrapes[-1] if state.scrapes else None
    figures.add_row("status", state.status)
    figures.add_row("raw events sent", f"{state.events_sent:,}  ({state.events_rate:,.0f}/s)")
    figures.add_row(
        "deltas applied",
        f"{last.total('freshet_deltas_applied'):,.0f}  ({_rate(state, 'freshet_deltas_applied'):,.0f}/s)"
        if last
        else "-",
    )
    figures.add_row("items in the index", f"{last.total('freshet_items'):,.0f}" if last else "-")
    for signal in SIGNALS:
        figures.add_row(f"freshness {signal}", _freshness(state, signal))
    rejected = last.total("freshet_deltas_rejected") if last else 0
    figures.add_row(
        "dead-letter / late",
        f"{state.dlq:,} malformed events   {state.late:,} too-late events   {rejected:,.0f} deltas refused",
    )
    share = state.same_day_share[-1] if state.same_day_share else None
    figures.add_row(
        "same-day items in results",
        f"{share:.0%}  {_spark(state.same_day_share)}" if share is not None else "-",
    )
    links = Table.grid(padding=(0, 2))
    links.add_column(style="bold cyan")
    links.add_column()
    for name, url in state.links.items():
        links.add_row(name, url)
    return Group(
        Panel(
            figures,
            title="freshet demo: streaming in-place tensor updates",
            subtitle="Ctrl-C stops everything",
        ),
        Panel(links, title="look inside"),
    )
