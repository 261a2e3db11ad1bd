"""Top-k retrieval with eligibility filters."""

from __future__ import annotations

import torch
from fastapi import APIRouter

from serving.deps import ReplicaDep
from serving.errors import InvalidRequestError, NotReadyError
from serving.models import Generation
from serving.query import request_problems
from serving.schemas import Hit, RetrieveRequest, RetrieveResponse

router = APIRouter(prefix="/v1", tags=["retrieval"])


@router.post("/retrieve", response_model=RetrieveResponse,
             responses={422: {"description": "invalid for this layout: wrong dim, unknown bit or field"},
                        413: {"description": "request body too large"}},
             summary="top-k eligible items for a query embedding or a user")  # fmt: skip
def retrieve(body: RetrieveRequest, replica: ReplicaDep) -> RetrieveResponse:
    problems = request_problems(replica.layout, body.embedding, body.required_bits, body.excluded_bits,
                                body.bloom, body.user)  # fmt: skip
    if problems:
        raise InvalidRequestError("; ".join(problems))
    generation = replica.generation  # one model version for the whole request, even across a switch
    result = generation.index.retrieve(_query(body, generation), body.k, required_bits=body.required_bits,
                                       excluded_bits=body.excluded_bits, bloom=body.bloom)  # fmt: skip
    names = result.feature_names
    hits = [
        Hit(item_id=int(item_id), score=float(score), features=dict(zip(names, map(float, row), strict=True)))
        for item_id, score, row in zip(result.item_ids, result.scores, result.features, strict=True)
    ]
    return RetrieveResponse(
        model_version=generation.version, layout_hash=replica.layout.layout_hash, items=hits
    )


def _query(body: RetrieveRequest, generation: Generation) -> torch.Tensor:
    if body.embedding is not None:
        return torch.tensor(body.embedding, dtype=torch.float32)
    if generation.towers is None:
        raise NotReadyError(
            f"model version {generation.version} has no query tower loaded (start the replica with --model-dir "
            "pointing at the published models); send a query embedding instead"
        )
    assert body.user is not None
    return generation.towers.query_tower.embed([body.user])[0]
