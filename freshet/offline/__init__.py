"""Offline paths over the same definitions as the stream: backfill from logged events, and verification.

* ``freshet.offline.eventlog``: the event directory backfill reads (one folder per source topic).
* ``freshet.offline.backfill``: the tensors the stream would have produced up to a watermark, as a snapshot.
* ``freshet.offline.verify``: compare two replicas, snapshots or backfills, item by item.
"""
