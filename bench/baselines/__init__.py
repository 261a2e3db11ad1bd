"""freshet measured against what users would pick instead, side by side on one machine and one stream.

* ``freshness``: rebuild-and-swap (latest state kept as deltas arrive, an index rebuilt every P seconds
  and swapped atomically; torch tensors or a faiss ``IndexFlatIP``) vs freshet's in-place apply, on the
  same timed delta stream (``stream``): staleness by probing, update CPU, peak memory, query latency.
* ``feature_store``: engagement features joined per request from Redis (a Feast-style online store) vs
  freshet's in-tensor features, at 100 candidates per request.
* ``scaling``: query latency, apply throughput and memory per item at growing catalog sizes.

``python -m bench.baselines [--quick]`` runs all three; never part of the test command.
"""
