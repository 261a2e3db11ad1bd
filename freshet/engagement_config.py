"""The windowed features of one source as one JSON document, for the JVM window operator.

The JVM side (``flink_jobs/java/dev/freshet/flink``) reads no YAML: everything it needs comes from the loaded,
validated ``FeatureSet`` and its ``TensorLayout`` through this document, so both sides have one declaration.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from freshet.windows import WindowedAggregate

if TYPE_CHECKING:
    from freshet.spec import Feature, FeatureSet


def engagement_config(feature_set: FeatureSet, source: str) -> dict[str, Any]:
    """What the JVM parser and window operator need of ``source``: its declarations and its windowed features.

    >>> from pathlib import Path
    >>> from freshet.spec import load_feature_set
    >>> config = engagement_config(load_feature_set(Path(__file__).parent.parent / "feature_defs"), "engagement")
    >>> config["features"][0]["name"], config["features"][0]["slide_ms"], config["max_out_of_orderness_ms"]
    ('likes_1h', 300000, 5000)
    """
    declared = feature_set.source(source)
    layout = feature_set.layout()
    features = [f for f in feature_set.features if f.source == source]
    if not features:
        raise ValueError(f"source {source!r} has no windowed features")
    return {
        "source": source,
        "key_field": feature_set.entity.key,
        "time_field": declared.event_time,
        "required": dict(declared.fields),
        "layout_hash": layout.layout_hash,
        # the width of a FEATURES record's value row (every feature column of the layout, of any source)
        "feature_columns": layout.num_features,
        "max_out_of_orderness_ms": declared.watermark.max_out_of_orderness_ms,
        "idle_timeout_ms": declared.watermark.idle_timeout_ms,
        "features": [_feature(f, layout.feature_region(f.name)) for f in features],
    }


def window_config(window: WindowedAggregate) -> dict[str, Any]:
    """One feature's window rules (``WindowedAggregate``) as the JVM ``WindowLogic`` takes them."""
    return {
        "aggregation": window.aggregation,
        "size_ms": window.window.size_ms,
        "slide_ms": window.window.slide_ms,
        "allowed_lateness_ms": window.allowed_lateness_ms,
        "late_policy": window.late_policy,
        "default": window.default,
    }


def _feature(feature: Feature, region: int) -> dict[str, Any]:
    return {
        "name": feature.name,
        "region": region,
        **window_config(WindowedAggregate.from_feature(feature)),
        "filter": None
        if feature.filter is None
        else feature.filter.model_dump(by_alias=True, exclude_none=True),
        "field": feature.field,
        "late_topic": feature.late.topic,
    }


def engagement_config_json(feature_set: FeatureSet, source: str) -> str:
    """``engagement_config`` as the compact JSON string the JVM operators are built with."""
    return json.dumps(engagement_config(feature_set, source), separators=(",", ":"))
