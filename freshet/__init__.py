"""freshet: keep a serving retrieval model fresh with streamed, in-place tensor deltas.

This package is the pure core: no Kafka, Flink or HTTP imports (an import-linter contract keeps it so).
"""

__version__ = "0.1.0"
