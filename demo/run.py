"""``freshet demo``: the whole pipeline on the embedded default, with a live view.

Starts, in order, and stops in reverse on Ctrl-C (or after ``--seconds``): the embedded broker, a
two-tower model trained for a few seconds and published, the Flink job on the local MiniCluster (web UI
on), one serving replica, and a social-feed generator — first yesterday's history, then today's posts
paced in real time. The view shows what a user of freshet watches: freshness per signal, throughput,
bad and late input, and how many of the items retrieval returns were published today.

Every raw record sent is logged under ``--events`` (the layout ``freshet backfill`` reads). With
``--verify``, stopping drains the pipeline and compares the replica with a backfill of that log
(``demo.compare``).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.live import Live

from demo.compare import Comparison, JobWatermark, LateGate, drain_record
from demo.feed import LiveFeed, TopicCounter, create_topics, make_producer, send, send_history
from demo.view import DemoState, Scrape, render
from freshet.broker import EmbeddedBroker
from freshet.feedgen import TOPIC_ENGAGEMENT, FeedConfig, FeedGenerator
from freshet.offline.eventlog import EventLogAppender
from freshet.spec import FeatureSet, load_feature_set
from freshet.training import train_and_publish
from freshet.watermarks import bounded_out_of_orderness

DELTA_TOPIC, DLQ_TOPIC = "freshet.deltas", "freshet.dlq"
HISTORY_FIRST_ID, LIVE_FIRST_ID = 1_000_000, 5_000_000


@dataclass(frozen=True)
class DemoSettings:
    defs: Path = Path("feature_defs")
    work_dir: Path = Path(".freshet/demo")
    seconds: float | None = None
    replica_port: int = 8000
    rest_ports: str = "8081-8090"
    engagements_per_s: float = 300.0
    posts_per_s: float = 5.0
    history_seconds: int = 60
    seed: int = 7
    events_dir: Path | None = None  # default: work_dir / "events"
    verify: bool = False

    @property
    def events(self) -> Path:
        return self.events_dir or self.work_dir / "events"


class Service:
    """A child process in its own process group, logging to a file; stopped with the whole group."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name, self.log_path = name, log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}; last lines of {self.log_path}:\n"
                + "\n".join(tail)
            )

    def stop(self, timeout_s: float = 20.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def service(name: str, argv: list[str], log_dir: Path) -> Iterator[Service]:
    svc = Service(name, argv, log_dir)
    try:
        yield svc
    finally:
        svc.stop()


def topic_partitions(fs: FeatureSet) -> dict[str, int]:
    # Raw topics get one partition: the job derives watermarks after parsing, per source subtask, so a
    # backlog read unevenly across partitions would turn the lagging partition's events late (README:
    # known limitations). The delta topic is keyed by item id over several partitions.
    topics = {s.topic: 1 for s in fs.sources} | {DELTA_TOPIC: 4, DLQ_TOPIC: 1}
    topics |= {f.late.topic: 1 for f in fs.features if f.late.topic}
    return topics


def job_command(s: DemoSettings, bootstrap: str, models: Path) -> list[str]:
    return [
        sys.executable, "-m", "freshet.cli", "job", "run",
        "--bootstrap", bootstrap, "--defs", str(s.defs), "--models", str(models),
        "--delta-topic", DELTA_TOPIC, "--dlq-topic", DLQ_TOPIC,
        "--checkpoint-dir", str((s.work_dir / "checkpoints").resolve()), "--rest-port", s.rest_ports,
        # one item per forward pass: the tower's float32 output depends on the batch, and batches form by
        # arrival time; backfill (--embed-batch 1) then embeds every item bit for bit the same
        "--embed-batch-size", "1",
        # the REST API's metrics (the window operator's watermark, read by the feed) fresh, not 10 s old
        "--conf", "metrics.fetcher.update-interval=100",
    ]  # fmt: skip


def replica_command(s: DemoSettings, bootstrap: str, models: Path) -> list[str]:
    return [
        sys.executable, "-m", "freshet.cli", "serve",
        "--bootstrap-servers", bootstrap, "--feature-defs", str(s.defs), "--model-dir", str(models),
        "--snapshot-dir", str(s.work_dir / "snapshots"), "--port", str(s.replica_port),
        "--snapshot-every-s", "30",
    ]  # fmt: skip


def run(s: DemoSettings, console: Console | None = None) -> int:
    """Run the demo until ``s.seconds`` pass or Ctrl-C; with ``s.verify``, verify's exit code, else 0."""
    console = console or Console()
    try:
        return _run(s, console)
    except KeyboardInterrupt:
        console.print("interrupted (Ctrl-C)")
        return 130
    finally:
        console.print("stopped: the broker, the Flink job and the replica are shut down")


def _run(s: DemoSettings, console: Console) -> int:
    fs = load_feature_set(s.defs)
    _check_events_dir(s)
    shutil.rmtree(s.work_dir, ignore_errors=True)
    logs = s.work_dir / "logs"
    logs.mkdir(parents=True)
    log = EventLogAppender(s.events)
    with contextlib.ExitStack() as stack:
        stack.callback(log.close)
        console.print("[bold]1/5[/] starting the embedded Kafka-protocol broker")
        broker = stack.enter_context(EmbeddedBroker(work_dir=s.work_dir / "broker"))
        bootstrap = broker.bootstrap_servers
        create_topics(bootstrap, topic_partitions(fs))
        console.print("[bold]2/5[/] training the two-tower model for a few seconds and publishing it")
        models = s.work_dir / "models"
        path, losses = train_and_publish(fs, models, pairs=8_000, epochs=2, seed=s.seed)
        console.print(f"      published {path} (loss {losses[0]:.2f} → {losses[-1]:.2f})")
        console.print("[bold]3/5[/] starting the Flink job on the local MiniCluster (web UI on)")
        job = stack.enter_context(service("flink-job", job_command(s, bootstrap, models), logs))
        console.print(f"[bold]4/5[/] starting a serving replica on http://127.0.0.1:{s.replica_port}")
        replica = stack.enter_context(service("replica", replica_command(s, bootstrap, models), logs))
        console.print("[bold]5/5[/] sending yesterday's history, then today's feed in real time")
        history = FeedConfig(
            seed=s.seed, first_item_id=HISTORY_FIRST_ID, posts_per_s=20, engagements_per_s=100
        )
        sent = send_history(bootstrap, history, int(time.time() * 1000), s.history_seconds, log)
        expected = int(history.posts_per_s * s.history_seconds)
        _wait_for_history(s, (job, replica), expected_items=expected, console=console)
        now_ms = int(time.time() * 1000)
        live_cfg = FeedConfig(
            seed=s.seed + 1, first_item_id=LIVE_FIRST_ID,
            posts_per_s=s.posts_per_s, engagements_per_s=s.engagements_per_s,
        )  # fmt: skip
        gen = FeedGenerator(live_cfg, start_ms=now_ms)
        watermark = JobWatermark(job.log_path)
        stack.callback(watermark.close)
        delay_ms = _delay_ms(fs, TOPIC_ENGAGEMENT)
        feed = LiveFeed(bootstrap, gen, log, LateGate(delay_ms), watermark)
        counter = TopicCounter(bootstrap, [DLQ_TOPIC, *{f.late.topic for f in fs.features if f.late.topic}])
        feed.start()
        counter.start()
        stack.callback(feed.stop)
        stack.callback(counter.stop)
        console.print(f"      every raw record sent is logged under {s.events} (what freshet backfill reads)")
        state = DemoState(links=_links(s, job))
        state.events_sent = sent
        _watch(s, state, feed, counter, gen, (job, replica), console)
        feed.stop()
        feed.join()
        if not s.verify:
            console.print(f"raw events sent: {s.events}; `freshet demo --verify` compares the replica with a "
                          "backfill of them when it stops")  # fmt: skip
            return 0
        return _compare(s, bootstrap, log, feed, watermark, models, console)
    return 0


def _compare(
    s: DemoSettings,
    bootstrap: str,
    log: EventLogAppender,
    feed: LiveFeed,
    watermark: JobWatermark,
    models: Path,
    console: Console,
) -> int:
    """Drain the pipeline, backfill the logged events and verify the replica against it; verify's exit code."""
    assert feed.gate.max_ts_ms is not None, "the live feed sent engagement events"
    if feed.ungated:
        console.print(
            f"[yellow]{feed.ungated} late events were sent before the job's watermark could be read[/]"
        )
    end = drain_record(feed.gate.max_ts_ms)
    producer = make_producer(bootstrap)
    send(producer, [end], log)
    producer.flush()
    producer.close()
    log.close()
    until_ms = bounded_out_of_orderness(end.ts_ms, feed.gate.max_out_of_orderness_ms)
    comparison = Comparison(s.defs, s.events, until_ms, models, s.work_dir / "backfill")
    replica = f"http://127.0.0.1:{s.replica_port}"
    console.print("\ncomparing the replica with a backfill of the logged events (Ctrl-C skips it):")
    for line in comparison.lines(replica):
        console.print(f"  $ {line}", highlight=False, soft_wrap=True)
    with console.status("draining: the end-of-feed event pushes the job's watermark past every window"):
        if not watermark.wait_for(until_ms, threading.Event(), timeout_s=180):
            console.print("[yellow]the job's watermark did not reach the end of the feed in 180 s[/]")
    with console.status("backfilling, then waiting for the replica to apply the last windows"):
        code, report = comparison.settle(replica, timeout_s=180)
    console.print(f"verify: {report}", highlight=False, soft_wrap=True)
    return code


def _check_events_dir(s: DemoSettings) -> None:
    """Refuse a named event directory that holds files: the log must hold this run's records only (the
    default, inside the work directory, is cleared with it)."""
    events = s.events.resolve()
    if events.is_relative_to(s.work_dir.resolve()) or not events.exists():
        return
    if any(events.iterdir()):
        raise SystemExit(f"freshet demo: --events {s.events} is not empty; name a new or empty directory")


def _delay_ms(fs: FeatureSet, topic: str) -> int:
    """The declared maximum out-of-orderness of the source read from ``topic``."""
    return next(src.watermark.max_out_of_orderness_ms for src in fs.sources if src.topic == topic)


def _wait_for_history(
    s: DemoSettings, services: tuple[Service, ...], expected_items: int, console: Console
) -> None:
    """Block until the replica holds (nearly) every history item, so live freshness is not mixed with it."""
    deadline = time.monotonic() + 300
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{s.replica_port}", timeout=5.0) as http,
        console.status(
            "waiting for the job to embed yesterday's items and the replica to apply them"
        ) as status,
    ):
        while time.monotonic() < deadline:
            for svc in services:
                svc.check()
            try:
                items = int(http.get("/v1/state").json().get("items", 0))
            except (httpx.HTTPError, ValueError):
                items = 0
            status.update(f"history: {items:,} of ~{expected_items:,} items embedded and applied")
            if items >= 0.95 * expected_items:
                console.print(f"      history applied: {items:,} items in the index")
                return
            time.sleep(1.0)
    raise RuntimeError(f"the history was not applied within 300 s; see the logs in {s.work_dir / 'logs'}")


def _links(s: DemoSettings, job: Service) -> dict[str, str]:
    return {
        "serving API docs": f"http://127.0.0.1:{s.replica_port}/docs",
        "replica state": f"http://127.0.0.1:{s.replica_port}/v1/state",
        "Prometheus metrics": f"http://127.0.0.1:{s.replica_port}/metrics",
        "Flink web UI (backpressure)": f"see {job.log_path} (first free port of {s.rest_ports})",
        "logs": str(job.log_path.parent),
    }


def _watch(
    s: DemoSettings,
    state: DemoState,
    feed: LiveFeed,
    counter: TopicCounter,
    gen: FeedGenerator,
    services: tuple[Service, ...],
    console: Console,
) -> int:
    base = f"http://127.0.0.1:{s.replica_port}"
    started = time.monotonic()
    rng = random.Random(s.seed)
    history_sent = state.events_sent
    with (
        httpx.Client(base_url=base, timeout=5.0) as http,
        Live(render(state), console=console, refresh_per_second=2) as live,
    ):
        try:
            while s.seconds is None or time.monotonic() - started < s.seconds:
                for svc in services:
                    svc.check()
                    _find_flink_ui(state, svc)
                _refresh(state, http, feed, counter, gen, rng, history_sent, started)
                live.update(render(state))
                time.sleep(1.0)
        except KeyboardInterrupt:
            state.status = "stopping (Ctrl-C)"
            live.update(render(state))
    return 0


def _find_flink_ui(state: DemoState, svc: Service) -> None:
    key = "Flink web UI (backpressure)"
    if svc.name != "flink-job" or state.links.get(key, "").startswith("http"):
        return
    for line in svc.log_path.read_text(errors="replace").splitlines():
        for word in line.split():
            if word.startswith("http://") and ":80" in word:
                state.links = {**state.links, key: word.rstrip(".,")}
                return


def _refresh(
    state: DemoState,
    http: httpx.Client,
    feed: LiveFeed,
    counter: TopicCounter,
    gen: FeedGenerator,
    rng: random.Random,
    history_sent: int,
    started: float,
) -> None:
    total_live = sum(feed.sent.values())
    state.events_sent = history_sent + total_live
    state.events_rate = total_live / max(time.monotonic() - started, 1e-9)
    state.dlq = counter.counts.get(DLQ_TOPIC, 0)
    state.late = sum(v for k, v in counter.counts.items() if k != DLQ_TOPIC)
    try:
        state.scrapes.append(Scrape.parse(time.monotonic(), http.get("/metrics").text))
        ready = http.get("/readyz").status_code == 200
    except httpx.HTTPError:
        state.status = "waiting for the replica"
        return
    state.status = "live" if ready else "replica catching up"
    if ready:
        share = _same_day_share(http, gen, rng)
        if share is not None:
            state.same_day_share.append(share)


def _same_day_share(
    http: httpx.Client, gen: FeedGenerator, rng: random.Random, users: int = 10
) -> float | None:
    """Share of today's posts among the items retrieved for a few random users."""
    today = total = 0
    for _ in range(users):
        body = {"user": gen.user(rng.randrange(gen.config.users)), "k": 20, "required_bits": ["policy_ok"]}
        resp = http.post("/v1/retrieve", json=body)
        if resp.status_code != 200:
            return None
        ids = [hit["item_id"] for hit in resp.json()["items"]]
        today += sum(1 for i in ids if i >= LIVE_FIRST_ID)
        total += len(ids)
    return today / total if total else None
