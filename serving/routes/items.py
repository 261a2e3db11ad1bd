"""One item's row: embedding, features, per-region versions, eligibility decoded to names."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Query

from freshet.bits import bloom_positions, positions_from_words
from freshet.layout import TensorLayout
from serving.deps import ReplicaDep
from serving.errors import InvalidRequestError, ItemNotFoundError
from serving.schemas import Eligibility, ItemResponse

router = APIRouter(prefix="/v1", tags=["items"])

BloomChecks = Annotated[
    list[str], Query(description="field:value pairs to test against the item's Bloom bits, e.g. region:PT")
]


@router.get("/items/{item_id}", response_model=ItemResponse, responses={404: {"description": "no such item"}},
            summary="an item's row, versions and eligibility")  # fmt: skip
def get_item(item_id: int, replica: ReplicaDep, bloom: BloomChecks = []) -> ItemResponse:  # noqa: B006
    layout = replica.layout
    checks = _parse_checks(layout, bloom)
    model = replica.model
    row = model.item(item_id)
    if row is None:
        raise ItemNotFoundError(f"item {item_id} is not in the model (never seen, or deleted)")
    words = np.asarray(row["eligibility"], dtype=np.int64)
    return ItemResponse(
        item_id=item_id,
        model_version=model.model_version,
        embedding=[float(x) for x in row["embedding"]] if row["valid"] else None,
        features={k: float(v) for k, v in row["features"].items()},
        eligibility=decode_eligibility(layout, words, checks),
        versions={k: int(v) for k, v in row["versions"].items()},
    )


def decode_eligibility(
    layout: TensorLayout, words: npt.NDArray[np.int64], checks: list[tuple[str, str]]
) -> Eligibility:
    """Set exact bits by name, set Bloom bits per field (relative to its block), and the asked membership tests."""
    positions = set(positions_from_words(words))
    bits = [b.name for b in layout.exact_bits if b.position in positions]
    blooms = {
        f.name: sorted(p - f.offset for p in positions if f.offset <= p < f.offset + f.width_bits)
        for f in layout.bloom_fields
    }
    matches: dict[str, dict[str, bool]] = {}
    for field, value in checks:
        hit = set(bloom_positions(layout.bloom(field), value)) <= positions
        matches.setdefault(field, {})[value] = hit
    return Eligibility(bits=bits, bloom=blooms, bloom_matches=matches)


def _parse_checks(layout: TensorLayout, raw: list[str]) -> list[tuple[str, str]]:
    known = {f.name for f in layout.bloom_fields}
    checks, problems = [], []
    for item in raw:
        field, sep, value = item.partition(":")
        if not sep or not value:
            problems.append(f"bloom: {item!r} is not field:value")
        elif field not in known:
            problems.append(f"bloom: unknown field {field!r} (known: {', '.join(sorted(known)) or 'none'})")
        else:
            checks.append((field, value))
    if problems:
        raise InvalidRequestError("; ".join(problems))
    return checks
