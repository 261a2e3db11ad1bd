"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serving.deps import ReplicaDep
from serving.schemas import ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="the process is up and its consumer thread runs")
def healthz(replica: ReplicaDep) -> JSONResponse:
    running = replica.consumer.running
    return JSONResponse({"ok": running, "consumer_running": running}, status_code=200 if running else 503)


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse}},
    summary="200 once caught up with the delta topic, 503 until then",
)
def readyz(replica: ReplicaDep) -> JSONResponse:
    consumer = replica.consumer
    ready = replica.ready
    lag = {str(p): v for p, v in sorted(consumer.lag.items())}
    if ready:
        detail = "caught up"
    elif consumer.last_error is not None:
        detail = f"delta source: {consumer.last_error}"
    elif not lag:
        detail = "connecting to the delta topic"
    elif not consumer.caught_up_once.is_set():
        total = consumer.total_lag()
        detail = "replaying the delta topic" + (f": {total} records behind" if total is not None else "")
    else:
        detail = f"lagging: {consumer.total_lag()} records behind"
    body = ReadyResponse(ready=ready, lag=lag, detail=detail)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
