"""Feature-store lookup vs in-tensor features, at 100 candidates per request.

The feature-store design, as a Feast-style online store serves it: engagement features live in Redis, one
hash per item (``item:{id}``, one field per feature); a request takes 100 candidates from a vector index
(faiss ``IndexFlatIP`` over the same embeddings), fetches their features with one pipelined round trip of
100 ``HMGET``, and scores them (inner product plus the layout's feature terms). freshet answers the same
request with one ``IndexModel.retrieve``: the features are columns of the index, in the score of every item.

Redis is Debian's ``redis-server`` on 127.0.0.1 (a free port, no persistence), started here and stopped at
the end; when it is missing and this runs as root it is installed with apt-get.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from bench.baselines.measure import Percentiles, one_intra_op_thread
from bench.baselines.stream import catalog_state, example_feature_set, unit_vectors
from freshet.layout import TensorLayout
from freshet.model import IndexModel
from freshet.retrieval import feature_scores

CANDIDATES = 100
INSTALL = "apt-get install -y redis-server"


class RedisUnavailableError(RuntimeError):
    """redis-server is not installed and cannot be installed from here."""


def redis_server_binary() -> str:
    """Path of ``redis-server``; installs Debian's package when missing and running as root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0:
        raise RedisUnavailableError(f"redis-server is not installed: run `sudo {INSTALL}` and retry")
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    done = subprocess.run(INSTALL.split(), capture_output=True, text=True)
    found = shutil.which("redis-server")
    if done.returncode != 0 or not found:
        raise RedisUnavailableError(f"`{INSTALL}` failed:\n{done.stderr[-2000:]}")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[Any]:
    """A private redis-server on 127.0.0.1; yields a connected ``redis.Redis`` client."""
    import redis

    port, workdir = _free_port(), tempfile.mkdtemp(prefix="freshet-redis-")
    args = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", workdir, "--daemonize", "no"]  # fmt: skip
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        _wait_ready(client, server)
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(client: Any, server: subprocess.Popen[bytes]) -> None:
    import redis

    for _ in range(100):
        if server.poll() is not None:
            err = server.stderr.read().decode() if server.stderr else ""
            raise RedisUnavailableError(f"redis-server exited with {server.returncode}: {err[-500:]}")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RedisUnavailableError("redis-server did not answer PING within 5 s")


def _load_features(client: Any, item_ids: np.ndarray, features: np.ndarray, names: list[str]) -> float:
    """HSET every item's features, pipelined in chunks; returns the seconds it took."""
    start = time.perf_counter()
    for lo in range(0, item_ids.shape[0], 5_000):
        pipe = client.pipeline(transaction=False)
        for item_id, row in zip(
            item_ids[lo : lo + 5_000].tolist(), features[lo : lo + 5_000].tolist(), strict=True
        ):
            pipe.hset(f"item:{item_id}", mapping=dict(zip(names, row, strict=True)))
        pipe.execute()
    return time.perf_counter() - start


class FeatureStoreRanker:
    """Candidates from faiss, features joined from Redis per request, then scored and ranked."""

    def __init__(
        self, layout: TensorLayout, client: Any, embedding: np.ndarray, item_ids: np.ndarray
    ) -> None:
        import faiss

        self.layout, self.client, self.item_ids = layout, client, item_ids
        self.names = [c.name for c in layout.feature_columns]
        self.index = faiss.IndexFlatIP(layout.embedding_dim)
        self.index.add(embedding)

    def candidates(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(query[None, :], CANDIDATES)
        return self.item_ids[rows[0]], scores[0]

    def join(self, item_ids: np.ndarray, similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One round trip of pipelined HMGETs, then score = similarity + feature terms, best first."""
        pipe = self.client.pipeline(transaction=False)
        for item_id in item_ids.tolist():
            pipe.hmget(f"item:{item_id}", self.names)
        features = np.array(pipe.execute(), dtype=np.float32)
        order = np.argsort(-(similarity + feature_scores(self.layout, features)), kind="stable")
        return item_ids[order], features[order]

    def request(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.join(*self.candidates(query))


def _timed(fn: Callable[[int], object], n: int) -> tuple[np.ndarray, float]:
    """Latencies (ms) of ``fn(i)`` for ``i < n``, closed loop, and the requests per second."""
    samples = np.zeros(n)
    start = time.perf_counter()
    for i in range(n):
        began = time.perf_counter()
        fn(i)
        samples[i] = time.perf_counter() - began
    return samples * 1e3, n / (time.perf_counter() - start)


def run_feature_store(items: int, requests: int, seed: int = 0) -> dict[str, Any]:
    """Both designs on the same catalog and queries; flat keys (unprefixed)."""
    one_intra_op_thread()
    feature_set = example_feature_set()
    layout = feature_set.layout()
    catalog = catalog_state(feature_set, items, 0, seed)
    queries = unit_vectors(np.random.default_rng(seed + 2), 256, layout.embedding_dim)
    out: dict[str, Any] = {"items": items, "candidates_per_request": CANDIDATES, "requests": requests,
                           "torch_threads": torch.get_num_threads()}  # fmt: skip
    with redis_server() as client:
        out["redis_version"] = client.info("server")["redis_version"]
        names = [c.name for c in layout.feature_columns]
        out["redis_load_s"] = round(_load_features(client, catalog.item_ids, catalog.features, names), 2)
        out["redis_used_bytes_per_item"] = round(client.info("memory")["used_memory"] / items, 1)
        store = FeatureStoreRanker(layout, client, catalog.item_embedding, catalog.item_ids)
        model = IndexModel.from_state(layout, catalog)
        out |= _compare(store, model, queries, requests)
    return out


def _compare(store: FeatureStoreRanker, model: IndexModel, queries: np.ndarray, n: int) -> dict[str, Any]:
    tensors = torch.from_numpy(queries)
    warm = min(n, 50)
    for i in range(warm):
        store.request(queries[i]), model.retrieve(tensors[i], CANDIDATES)
    fs_ms, fs_rps = _timed(lambda i: store.request(queries[i % len(queries)]), n)
    fr_ms, fr_rps = _timed(lambda i: model.retrieve(tensors[i % len(queries)], CANDIDATES), n)
    cands = [store.candidates(q) for q in queries]
    cand_ms, _ = _timed(lambda i: store.candidates(queries[i % len(queries)]), n)
    join_ms, _ = _timed(lambda i: store.join(*cands[i % len(cands)]), n)
    return {
        **Percentiles.of(fs_ms, "feature_store_request", "ms", (50, 99)),
        "feature_store_requests_per_s": round(fs_rps, 1),
        **Percentiles.of(cand_ms, "feature_store_candidates", "ms", (50, 99)),
        **Percentiles.of(join_ms, "feature_store_join", "ms", (50, 99)),
        **Percentiles.of(fr_ms, "freshet_request", "ms", (50, 99)),
        "freshet_requests_per_s": round(fr_rps, 1),
    }
