"""Prometheus exposition of this replica's registry."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.deps import ReplicaDep

router = APIRouter(tags=["ops"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(replica: ReplicaDep) -> Response:
    return Response(generate_latest(replica.metrics.registry), media_type=CONTENT_TYPE_LATEST)
