"""The declaration models: what one ``feature_defs/*.yaml`` file may say.

Every model is frozen and rejects unknown keys. Checks that need only one model (a sliding window's
slide divides its size, ``side_output`` names a topic) live here as validators; checks across models
(names unique, references resolve, field kinds fit) live in ``freshet.spec.checks``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt, model_validator

from freshet.aggregators import Aggregation
from freshet.events import FieldKind
from freshet.layout import EmbeddingDType
from freshet.spec.base import FieldName, FieldProblem, Frozen, Name, Topic
from freshet.spec.durations import NonNegativeDurationMs, PositiveDurationMs, format_duration
from freshet.spec.predicates import Number, Predicate

#: Exact bits live in the first words of a row's eligibility; more than this is surely a mistake.
MAX_EXACT_BITS = 256
#: Bloom blocks are whole int64 words, so a query mask is built word by word.
BLOOM_WORD_BITS = 64


class Entity(Frozen):
    """The thing a row of the index is: its name and the event field holding its id."""

    name: Name
    #: the id field in every event: a non-negative int64 (the row key and the Kafka key)
    key: FieldName


class Watermark(Frozen):
    """Event-time progress of one source."""

    max_out_of_orderness_ms: NonNegativeDurationMs = Field(alias="max_out_of_orderness")
    #: a partition silent this long stops holding back the watermark
    idle_timeout_ms: PositiveDurationMs = Field(alias="idle_timeout")


class Source(Frozen):
    """A raw topic of JSON events. ``fields`` lists what events carry besides the key and event time."""

    name: Name
    topic: Topic
    format: Literal["json"] = "json"
    #: the event-time field: epoch milliseconds or an ISO-8601 time with a zone
    event_time: FieldName
    watermark: Watermark
    fields: dict[FieldName, FieldKind] = Field(default_factory=dict)


class Tumbling(Frozen):
    """Fixed, non-overlapping windows of ``size``."""

    kind: Literal["tumbling"]
    size_ms: PositiveDurationMs = Field(alias="size")


class Sliding(Frozen):
    """Windows of ``size`` starting every ``slide``; each event is in ``size / slide`` windows."""

    kind: Literal["sliding"]
    size_ms: PositiveDurationMs = Field(alias="size")
    slide_ms: PositiveDurationMs = Field(alias="slide")

    @model_validator(mode="after")
    def _slide_divides_size(self) -> Sliding:
        if self.size_ms % self.slide_ms:
            slide, size = format_duration(self.slide_ms), format_duration(self.size_ms)
            raise FieldProblem("slide", f"{slide} must divide size {size}")
        return self


Window = Annotated[Tumbling | Sliding, Field(discriminator="kind")]


class LateData(Frozen):
    """What happens to events that arrive after the watermark passed their window's end.

    ``update``: within ``allowed_lateness`` they update the window and its corrected result is
    emitted again (a newer version); later ones are counted and dropped. ``side_output``: the same,
    but events later than ``allowed_lateness`` go to ``topic``. ``drop``: every late event is
    counted and dropped.
    """

    policy: Literal["update", "side_output", "drop"] = "update"
    topic: Topic | None = None

    @model_validator(mode="after")
    def _topic_iff_side_output(self) -> LateData:
        if self.policy == "side_output" and self.topic is None:
            raise FieldProblem(
                "topic", "policy side_output sends too-late events to a topic; add topic: <topic name>"
            )
        if self.policy != "side_output" and self.topic is not None:
            raise FieldProblem("topic", f"policy {self.policy} sends nothing to a topic; remove topic")
        return self


class Score(Frozen):
    """This feature's term of the retrieval score: ``weight * transform(value)``."""

    weight: Number
    transform: Literal["none", "log1p"] = "log1p"


class Feature(Frozen):
    """A windowed aggregate of one source's events: one float32 column of the ``features`` tensor."""

    name: Name
    source: Name
    filter: Predicate | None = None
    aggregation: Aggregation
    #: the event field aggregated; every aggregation but ``count`` needs one
    field: FieldName | None = None
    window: Window
    allowed_lateness_ms: NonNegativeDurationMs = Field("0s", alias="allowed_lateness", validate_default=True)
    late: LateData = LateData()
    #: the column's value for rows with no data yet
    default: Number = 0.0
    score: Score | None = None

    @model_validator(mode="after")
    def _field_fits_aggregation(self) -> Feature:
        if self.aggregation == "count" and self.field is not None:
            raise FieldProblem("field", "count counts events and takes no field; remove field")
        if self.aggregation != "count" and self.field is None:
            raise FieldProblem("field", f"{self.aggregation} needs the event field it aggregates; add field")
        return self

    @model_validator(mode="after")
    def _lateness_fits_policy(self) -> Feature:
        if self.late.policy == "drop" and self.allowed_lateness_ms:
            lateness = format_duration(self.allowed_lateness_ms)
            raise FieldProblem(
                "allowed_lateness",
                f"policy drop discards every late event, so {lateness} of lateness keeps state for "
                "nothing; set allowed_lateness: 0s or use policy update",
            )
        return self


class Embedding(Frozen):
    """The item embedding: computed by the item tower of the published model ``model``."""

    source: Name
    input_fields: tuple[FieldName, ...] = Field(min_length=1)
    dim: StrictInt = Field(ge=1, le=65_536)
    dtype: EmbeddingDType = "float32"
    model: Name


class ExactBitRule(Frozen):
    """A named eligibility bit, set while ``when`` holds for the item's attributes."""

    name: Name
    #: pinned position; bits without one take the lowest free positions in declaration order
    bit: StrictInt | None = Field(None, ge=0, lt=MAX_EXACT_BITS)
    when: Predicate


class BloomRule(Frozen):
    """Bloom signature bits of a high-cardinality attribute (a string or a list of strings)."""

    field: FieldName
    width_bits: StrictInt = Field(ge=BLOOM_WORD_BITS, le=4096, multiple_of=BLOOM_WORD_BITS)
    num_hashes: StrictInt = Field(ge=1, le=16)


class Eligibility(Frozen):
    """Eligibility bits derived from the item-attribute events of ``source``."""

    source: Name
    bits: tuple[ExactBitRule, ...] = ()
    bloom: tuple[BloomRule, ...] = ()


class DefinitionFile(Frozen):
    """One YAML file: any part of the definitions. ``FeatureSet`` is all files merged."""

    entity: Entity | None = None
    sources: tuple[Source, ...] = ()
    features: tuple[Feature, ...] = ()
    embedding: Embedding | None = None
    eligibility: Eligibility | None = None
