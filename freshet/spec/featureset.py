"""``FeatureSet``: every file's declarations merged, checked as a whole, and the layout derived from it."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

from pydantic import model_validator

from freshet.layout import BloomField, ExactBit, FeatureColumn, ScoreTerm, TensorLayout
from freshet.spec.base import SpecError
from freshet.spec.checks import Part, check_parts
from freshet.spec.models import DefinitionFile, Embedding, Entity, Feature, Source
from freshet.spec.positions import assign_bit_positions, bloom_offsets, bloom_start


class FeatureSet(DefinitionFile):
    """The validated definitions of one deployment: what both the Flink jobs and the replicas derive from.

    Constructing one runs every cross-declaration check; ``load_feature_set`` reads one from YAML.
    """

    entity: Entity
    embedding: Embedding

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSet:
        problems = check_parts([Part("feature set", self)], "feature set")
        if problems:
            raise SpecError([str(p) for p in problems])
        return self

    def source(self, name: str) -> Source:
        """The source called ``name``."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(f"no source named {name!r}")

    def feature(self, name: str) -> Feature:
        """The feature called ``name``."""
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature named {name!r}")

    def layout(self) -> TensorLayout:
        """The tensor layout: columns in declaration order, exact bits, then word-aligned Bloom blocks."""
        return TensorLayout(
            embedding_dim=self.embedding.dim,
            embedding_dtype=self.embedding.dtype,
            feature_columns=tuple(
                FeatureColumn(f.name, i, f.default + 0.0) for i, f in enumerate(self.features)
            ),
            exact_bits=self._exact_bits(),
            bloom_fields=self._bloom_fields(),
            embedding_model=self.embedding.model,
            score_terms=tuple(
                ScoreTerm(i, f.score.weight, f.score.transform)
                for i, f in enumerate(self.features)
                if f.score
            ),
        )

    def _exact_bits(self) -> tuple[ExactBit, ...]:
        rules = self.eligibility.bits if self.eligibility else ()
        positions = assign_bit_positions([rule.bit for rule in rules])
        bits = (ExactBit(rule.name, p) for rule, p in zip(rules, positions, strict=True))
        # sorted, so the order rules are written in does not change the hash when positions stay
        return tuple(sorted(bits, key=lambda b: b.position))

    def _bloom_fields(self) -> tuple[BloomField, ...]:
        rules = self.eligibility.bloom if self.eligibility else ()
        start = bloom_start([b.position for b in self._exact_bits()])
        offsets = bloom_offsets(start, [rule.width_bits for rule in rules])
        return tuple(
            BloomField(rule.field, offset, rule.width_bits, rule.num_hashes)
            for rule, offset in zip(rules, offsets, strict=True)
        )


def merge(files: Sequence[DefinitionFile]) -> FeatureSet:
    """One ``FeatureSet`` from files already checked together (raises ``SpecError`` otherwise)."""
    eligibility = [f.eligibility for f in files if f.eligibility]
    return FeatureSet.model_validate(
        {
            "entity": next((f.entity for f in files if f.entity), None),
            "sources": tuple(chain.from_iterable(f.sources for f in files)),
            "features": tuple(chain.from_iterable(f.features for f in files)),
            "embedding": next((f.embedding for f in files if f.embedding), None),
            "eligibility": {
                "source": eligibility[0].source,
                "bits": tuple(chain.from_iterable(e.bits for e in eligibility)),
                "bloom": tuple(chain.from_iterable(e.bloom for e in eligibility)),
            }
            if eligibility
            else None,
        }
    )
