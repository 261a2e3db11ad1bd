"""The feature-definition language: ``feature_defs/*.yaml`` → one validated ``FeatureSet`` → ``TensorLayout``.

A file may hold any part of the definitions; a directory's ``*.yaml`` files are merged in file-name
order (the entity and the embedding are declared once, sources, features and eligibility rules in any
file)::

    entity: {name: item, key: item_id}
    sources:
      - name: engagement
        topic: engagement
        event_time: ts
        watermark: {max_out_of_orderness: 5s, idle_timeout: 1m}
        fields: {user_id: int, action: string}
      - name: item_attributes
        topic: item.attributes
        event_time: ts
        watermark: {max_out_of_orderness: 30s, idle_timeout: 5m}
        fields: {title: string, policy_status: string, region: strings}
    features:
      - name: likes_1h
        source: engagement
        filter: {field: action, eq: like}
        aggregation: count
        window: {kind: sliding, size: 1h, slide: 5m}
        allowed_lateness: 1m
        late: {policy: update}        # or side_output (with topic: ...) or drop
        default: 0
        score: {weight: 0.5, transform: log1p}
    embedding: {source: item_attributes, input_fields: [title], dim: 64, dtype: float32, model: two_tower}
    eligibility:
      source: item_attributes
      bits:
        - {name: policy_ok, bit: 0, when: {field: policy_status, eq: approved}}
      bloom:
        - {field: region, width_bits: 128, num_hashes: 3}

Problems read ``file: dotted.path: message`` and are all reported at once (``validate_paths``,
``SpecError.problems``). ``freshet.eligibility`` derives eligibility words from a ``FeatureSet``.
"""

from freshet.spec.base import SpecError
from freshet.spec.durations import format_duration, parse_duration
from freshet.spec.featureset import FeatureSet
from freshet.spec.loader import feature_set_from_yaml, json_schema, load_feature_set, validate_paths
from freshet.spec.models import (
    BloomRule,
    DefinitionFile,
    Eligibility,
    Embedding,
    Entity,
    ExactBitRule,
    Feature,
    LateData,
    Score,
    Sliding,
    Source,
    Tumbling,
    Watermark,
    Window,
)
from freshet.spec.predicates import AllOf, AnyOf, Contains, Eq, In, Not, Predicate, Range

__all__ = [
    "AllOf",
    "AnyOf",
    "BloomRule",
    "Contains",
    "DefinitionFile",
    "Eligibility",
    "Embedding",
    "Entity",
    "Eq",
    "ExactBitRule",
    "Feature",
    "FeatureSet",
    "In",
    "LateData",
    "Not",
    "Predicate",
    "Range",
    "Score",
    "Sliding",
    "Source",
    "SpecError",
    "Tumbling",
    "Watermark",
    "Window",
    "feature_set_from_yaml",
    "format_duration",
    "json_schema",
    "load_feature_set",
    "parse_duration",
    "validate_paths",
]
