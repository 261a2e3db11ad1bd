"""Measure the delta job's engagement path end to end: Kafka → parse → windows → exactly-once Kafka sink.

    python -m flink_jobs.throughput --events 50000 --out results.json

Starts the embedded broker, publishes a small model, writes ``--events`` engagement events over ``--items``
items to a topic with ``--partitions`` partitions, runs ``freshet job run`` against them, and reads the REST
metrics of the window operator: the rate at which it consumed the events (first to last record in). Then it
times single attribute events to their committed deltas (latency), and the pure window logic alone (no
Flink): the ceiling a per-event Python operator can reach. Results are one JSON object (stdout, and ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flink_jobs.runtime import PROJECT_ROOT

T0_MS = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000


def engagement(n: int, items: int, step_ms: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    actions = ("like", "share", "comment", "view", "view", "view")
    out = []
    for i in range(n):
        doc = {"item_id": rng.randrange(items), "ts": T0_MS + i * step_ms - rng.randrange(2_000),
               "user_id": rng.randrange(100_000), "action": rng.choice(actions), "dwell_ms": rng.randrange(60_000)}  # fmt: skip
        out.append(json.dumps(doc).encode())
    return out


def logic_rate(values: list[bytes]) -> float:
    """Events/s of ``EventParser`` + ``EngagementLogic`` alone, with a state per item in a dict."""
    from freshet.job_logic import EngagementLogic, EventParser
    from freshet.spec import load_feature_set

    feature_set = load_feature_set(PROJECT_ROOT / "feature_defs")
    parse, logic = EventParser.of(feature_set, "engagement"), EngagementLogic(feature_set)
    states: dict[int, Any] = {}
    started = time.perf_counter()
    max_ts = 0
    for raw in values:
        event = parse(raw)
        max_ts = max(max_ts, event.ts_ms)  # type: ignore[union-attr]
        step = logic.on_event(states.get(event.item_id, {}), event, max_ts - 5_001)  # type: ignore[union-attr, arg-type]
        states[event.item_id] = step.states  # type: ignore[union-attr]
    return len(values) / (time.perf_counter() - started)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    import kafka_helpers
    from kafka import KafkaProducer

    from freshet.broker import EmbeddedBroker
    from freshet.publish import publish_model
    from freshet.spec import load_feature_set
    from freshet.towers import TowerConfig, TwoTower

    work = Path(tempfile.mkdtemp(prefix="freshet-throughput-"))
    layout = load_feature_set(PROJECT_ROOT / "feature_defs").layout()
    publish_model(work / "models", "two_tower",
                  TwoTower(TowerConfig(("user_id",), layout.embedding_dim, 1024, 32),
                           TowerConfig(("title", "text", "topic", "author_id"), layout.embedding_dim, 1024, 32)),
                  layout_hash=layout.layout_hash)  # fmt: skip
    values = engagement(args.events, args.items, args.step_ms)
    broker = EmbeddedBroker(work_dir=work / "broker").start()
    try:
        servers = broker.bootstrap_servers
        for topic, partitions in (("engagement", args.partitions), ("items.published", 1), ("item.attributes", 1),
                                  ("engagement.late", 1), ("freshet.deltas", 3), ("freshet.dlq", 1)):  # fmt: skip
            kafka_helpers.create_topic(servers, topic, partitions)
        producer = KafkaProducer(bootstrap_servers=servers, linger_ms=20, batch_size=256 * 1024)
        for value in values:
            producer.send("engagement", value=value)
        producer.flush()
        producer.close()
        result = _run_job(args, servers, work, values)
        result["logic_only_events_per_s"] = round(logic_rate(values[: min(len(values), 20_000)]))
        return result
    finally:
        broker.stop()


def _run_job(args: argparse.Namespace, servers: str, work: Path, values: list[bytes]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "freshet.cli", "job", "run", "--bootstrap", servers, "--models", str(work / "models"),
            "--checkpoint-dir", str(work / "checkpoints"), "--log-dir", str(work / "flink-log"),
            "--checkpoint-interval-ms", str(args.checkpoint_interval_ms), "--parallelism", str(args.parallelism),
            "--conf", "metrics.fetcher.update-interval=500"]  # fmt: skip
    argv += ["--window-operator", args.window_operator]
    for conf in args.conf or ():
        argv += ["--conf", conf]
    for prop in args.source_property or ():
        argv += ["--source-property", prop]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=(work / "driver.err").open("w"), text=True,
                            start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    try:
        started = json.loads(proc.stdout.readline())
        result = _observe(started["rest_url"], started["job_id"], len(values), lambda: _tree_cpu_s(proc.pid))
        result.update(_latency(servers, args.latency_probes))
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def _latency(servers: str, probes: int, spacing_s: float = 0.25) -> dict[str, Any]:
    """Event → committed delta, in wall-clock seconds, on the eligibility path (a delta per event, no window
    to wait for): Python bundles plus the checkpoint that commits the Kafka transaction. A windowed feature
    adds its event-time wait (window end + out-of-orderness) on top."""
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    import kafka_helpers
    from kafka import KafkaProducer

    from freshet.deltas import DeltaKind, decode_deltas
    from freshet.spec import load_feature_set

    layout = load_feature_set(PROJECT_ROOT / "feature_defs").layout()
    consumer = kafka_helpers.assigned_consumer(servers, "freshet.deltas", "read_committed")
    counts = _read_to_end(
        consumer, kafka_helpers.caught_up, layout
    )  # the throughput run's: up to ~2M records
    producer = KafkaProducer(bootstrap_servers=servers, linger_ms=0)
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}
    base_id = 10**12
    for i in range(probes):
        doc = {"item_id": base_id + i, "ts": T0_MS + i, "policy_status": "approved", "language": "en",
               "region": "PT", "nsfw": False, "media_type": "text", "duration_s": 0}  # fmt: skip
        producer.send("item.attributes", value=json.dumps(doc).encode()).get(timeout=10)
        sent[base_id + i] = time.monotonic()
        _collect(consumer, seen, layout, DeltaKind, decode_deltas, spacing_s)
    deadline = time.monotonic() + 30
    while len(seen) < probes and time.monotonic() < deadline:
        _collect(consumer, seen, layout, DeltaKind, decode_deltas, 0.05)
    producer.close()
    consumer.close()
    latencies = sorted(seen[i] - sent[i] for i in seen if i in sent)
    if not latencies:
        return {"latency_probes": probes, "latency_seen": 0, **counts}
    return {
        **counts,
        "latency_probes": probes,
        "latency_seen": len(latencies),
        "event_to_committed_delta_s_p50": round(latencies[len(latencies) // 2], 3),
        "event_to_committed_delta_s_max": round(latencies[-1], 3),
    }


def _read_to_end(
    consumer: Any, caught_up: Callable[[Any], bool], layout: Any, timeout_s: float = 300
) -> dict[str, int]:
    """Poll until ``consumer`` is at the high watermark of every partition; count the delta records that came
    (checkpoint markers aside) and the deltas they hold (a FEATURES record holds several)."""
    from freshet.deltas import decode_batch

    records = deltas = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        values = [
            r.value for batch in consumer.poll(timeout_ms=100, max_records=50_000).values() for r in batch
        ]
        batch = decode_batch(values, layout)
        records += len(values) - len(batch.marker_index)
        deltas += len(batch)
        if caught_up(consumer):
            return {"delta_records": records, "deltas": deltas}
    raise RuntimeError(f"the delta topic was not read to its end within {timeout_s} s")


def _collect(
    consumer: Any, seen: dict[int, float], layout: Any, kind: Any, decode: Any, wait_s: float
) -> None:
    from freshet.markers import is_marker

    deadline = time.monotonic() + wait_s
    while True:
        for batch in consumer.poll(timeout_ms=20).values():
            now = time.monotonic()
            for record in batch:
                if is_marker(record.value):  # the checkpoint markers share the delta topic
                    continue
                for delta in decode(record.value, layout):
                    if delta.kind == kind.ELIGIBILITY:
                        seen.setdefault(delta.item_id, now)
        if time.monotonic() >= deadline:
            return


def _observe(
    rest: str, job_id: str, n: int, cpu_s: Callable[[], float], timeout_s: float = 900
) -> dict[str, Any]:
    job = _get(f"{rest}/jobs/{job_id}")
    vertex = next(v["id"] for v in job["vertices"] if "windows engagement" in v["name"])
    samples: list[tuple[float, int, float]] = []
    load = _VertexLoad(rest, job_id, job["vertices"])
    records_out = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        subtasks = _get(f"{rest}/jobs/{job_id}/vertices/{vertex}")["subtasks"]
        count = sum(int(s["metrics"]["read-records"]) for s in subtasks)
        records_out = sum(int(s["metrics"]["write-records"]) for s in subtasks)
        samples.append((time.monotonic(), count, cpu_s()))
        if samples[-1][1] >= n:
            break
        if count > 0:
            load.sample()
        time.sleep(0.5)
    first, _, cpu_first = next((s for s in samples if s[1] > 0), samples[-1])
    last_t, last_count, _ = samples[-1]
    committed_t = _next_checkpoint(rest, job_id, deadline)
    job_cpu_s = cpu_s() - cpu_first
    checkpoints = _get(f"{rest}/jobs/{job_id}/checkpoints")
    return {
        "events": n,
        "events_read_by_window_operator": last_count,
        # delta records (FEATURE and FEATURES) and too-late events out of the window operator, when the last
        # event was read (the firings that last event's watermark triggers come after)
        "window_operator_records_out": records_out,
        "seconds_first_to_last_event": round(last_t - first, 2),
        "window_operator_events_per_s": round(last_count / max(last_t - first, 1e-9)),
        # the rate over the second half of the events: the JVM's JIT compiler takes a third of the 2 cores for
        # the first ~10 s of a job (measured per thread from /proc), so a short run mostly measures warm-up
        "second_half_events_per_s": _second_half_rate(samples, n),
        # (seconds since the first event was read, events read by then): the rate's course over the run
        "read_over_time": [(round(t - first, 2), c) for t, c, _ in samples if t >= first],
        # the deltas of every window those events fired are committed with the first checkpoint after the last one
        "seconds_first_event_to_committed": round(committed_t - first, 2),
        "end_to_end_events_per_s": round(last_count / max(committed_t - first, 1e-9)),
        # CPU the job's processes (JVM and Python workers, not the broker) spent meanwhile: on a shared machine
        # the wall-clock rate follows the load; events per CPU second is the job's own cost
        "job_cpu_seconds": round(job_cpu_s, 2),
        "events_per_job_cpu_second": round(last_count / max(job_cpu_s, 1e-9)),
        "checkpoints_completed": checkpoints["counts"]["completed"],
        # per task (chain of operators): ms per second busy / waiting on its output, while the events flowed;
        # the busiest task that is not backpressured is the one that sets the rate
        "task_busy_ms_per_s": load.mean("busyTimeMsPerSecond"),
        "task_backpressured_ms_per_s": load.mean("backPressuredTimeMsPerSecond"),
        "checkpoint_duration_ms_avg": checkpoints["summary"]["end_to_end_duration"]["avg"],
    }


def _second_half_rate(samples: list[tuple[float, int, float]], n: int) -> int | None:
    """Events/s between the first sample past ``n / 2`` events read and the last sample (None: too few samples)."""
    half = next((s for s in samples if s[1] >= n / 2), None)
    last = samples[-1]
    if half is None or last[0] - half[0] < 1.0:
        return None
    return round((last[1] - half[1]) / (last[0] - half[0]))


class _VertexLoad:
    """Samples of each task's busy and backpressured time (Flink's task metrics, the ones the web UI colours)."""

    METRICS = ("busyTimeMsPerSecond", "backPressuredTimeMsPerSecond")

    def __init__(self, rest: str, job_id: str, vertices: list[dict[str, Any]]) -> None:
        self._urls = {v["name"][:60]: f"{rest}/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics"
                      f"?get={','.join(self.METRICS)}&agg=max" for v in vertices}  # fmt: skip
        self._samples: dict[tuple[str, str], list[float]] = {}

    def sample(self) -> None:
        for name, url in self._urls.items():
            for metric in _get(url):
                value = metric.get("max")
                if value is not None and value == value:  # NaN before the first measurement
                    self._samples.setdefault((name, metric["id"]), []).append(float(value))

    def mean(self, metric: str) -> dict[str, float]:
        return {name: round(sum(values) / len(values)) for (name, m), values in sorted(self._samples.items())
                if m == metric and values}  # fmt: skip


def _tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of process ``root`` and its descendants, from /proc (0.0 where there is none)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return 0.0
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


def _next_checkpoint(rest: str, job_id: str, deadline: float) -> float:
    """When the first checkpoint triggered from now on completed (its Kafka transactions then commit)."""
    url = f"{rest}/jobs/{job_id}/checkpoints"
    asked_ms = time.time() * 1000
    while time.monotonic() < deadline:
        latest = (_get(url).get("latest") or {}).get("completed") or {}
        if latest.get("trigger_timestamp", 0) >= asked_ms:
            return time.monotonic() - (time.time() * 1000 - latest["latest_ack_timestamp"]) / 1000
        time.sleep(0.1)
    return time.monotonic()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--step-ms", type=int, default=50, help="event time between consecutive events")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--checkpoint-interval-ms", type=int, default=1_000)
    parser.add_argument("--latency-probes", type=int, default=20, help="attribute events timed one by one")
    parser.add_argument("--conf", action="append", metavar="KEY=VALUE", help="Flink option for the job")
    parser.add_argument("--window-operator", choices=("jvm", "python"), default="jvm")
    parser.add_argument(
        "--source-property", action="append", metavar="KEY=VALUE", help="Kafka source property"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = {"machine": {"cpus": os.cpu_count()}, **vars(args), **measure(args)}
    result["out"] = str(args.out) if args.out else None
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
