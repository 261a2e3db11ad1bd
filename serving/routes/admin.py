"""Admin endpoints (bearer token; disabled when no token is configured)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from serving.deps import ReplicaDep, require_admin
from serving.replica import ModelChange
from serving.schemas import ModelRequest, ModelResponse, SnapshotResponse

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={
        403: {"description": "missing or wrong token"},
        404: {"description": "admin endpoints disabled (no token configured)"},
    },
)


@router.post("/snapshot", response_model=SnapshotResponse, summary="write a snapshot now")
def snapshot(replica: ReplicaDep) -> SnapshotResponse:
    taken = replica.snapshot()
    return SnapshotResponse(
        path=str(taken.path),
        offsets={str(p): o for p, o in sorted(taken.offsets.items())},
        model_version=taken.model_version,
        digest=taken.digest,
        items=taken.items,
    )


@router.post(
    "/model",
    response_model=ModelResponse,
    responses={202: {"model": ModelResponse, "description": "staged; not switched yet (coverage too low)"},
               409: {"description": "refused: not published, failed verification, or already active"}},
    summary="load a published model version beside the active one and switch to it",
)  # fmt: skip
def switch_model(body: ModelRequest, replica: ReplicaDep, response: Response) -> ModelResponse:
    change = replica.switch_model(body.version, min_coverage=body.min_coverage, snapshot=body.snapshot)
    if change.status == "staged":
        response.status_code = 202
    return _response(change)


@router.post("/rollback", response_model=ModelResponse, responses={409: {"description": "nothing to roll back to"}},
             summary="make the previous model version active again")  # fmt: skip
def rollback(replica: ReplicaDep) -> ModelResponse:
    return _response(replica.rollback_model())


def _response(change: ModelChange) -> ModelResponse:
    return ModelResponse(
        status=change.status, active_version=change.active_version, standby_version=change.standby_version,
        coverage=change.coverage, snapshot=str(change.snapshot) if change.snapshot else None,
    )  # fmt: skip
