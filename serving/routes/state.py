"""The replica's state as one consistent cut: what two replicas compare to prove they converged."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deps import ReplicaDep
from serving.schemas import StateResponse

router = APIRouter(prefix="/v1", tags=["state"])


@router.get(
    "/state",
    response_model=StateResponse,
    summary="model version, layout hash, applied offsets and tensor digest",
)
def state(replica: ReplicaDep) -> StateResponse:
    s = replica.state()
    standby = replica.generations.standby
    return StateResponse(
        model_version=s.model_version,
        layout_hash=s.layout_hash,
        topic=replica.settings.delta_topic,
        offsets={str(p): o for p, o in sorted(s.offsets.items())},
        digest=s.digest,
        items=s.items,
        ready=s.ready,
        started_from_snapshot=str(replica.started_from) if replica.started_from else None,
        flink_checkpoint=s.flink_checkpoint,
        query_tower=replica.generation.towers is not None,
        standby_version=standby.version if standby else None,
        standby_role=replica.generations.standby_role if standby else None,
    )
