"""Admin endpoints (bearer token; disabled when no token is configured)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from serving.deps import ReplicaDep, require_admin
from serving.schemas import SnapshotResponse

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
