"""The FastAPI app factory: ``create_app(replica, settings)``; nothing is built at import time.

Each app holds its own replica and settings in ``app.state``, so two differently configured replicas can
run in one process (the tests do). The lifespan starts the replica (load the newest valid snapshot, then
consume and snapshot in background threads) and stops it on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

import freshet
from serving.errors import install_error_handlers
from serving.limits import BodySizeLimit
from serving.replica import Replica
from serving.routes import admin, health, items, metrics, retrieve, state
from serving.settings import Settings

DESCRIPTION = """\
A freshet serving replica: an in-memory index-as-model kept fresh by tensor deltas streamed from Kafka.

* `POST /v1/retrieve` answers top-k queries with eligibility filters;
* `GET /v1/items/{item_id}` shows one item's row, versions and eligibility;
* `GET /v1/state` is the consistent cut two replicas compare (model version, offsets, tensor digest);
* `/healthz`, `/readyz` (503 until caught up with the delta topic) and `/metrics` are for operators;
* `/admin/*` needs the replica's bearer token and is disabled when none is configured.
"""


def create_app(replica: Replica, settings: Settings | None = None, *, manage_replica: bool = True) -> FastAPI:
    """The HTTP app of ``replica``; with ``manage_replica`` its lifespan starts and stops the replica."""
    settings = settings if settings is not None else replica.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_replica:
            await anyio.to_thread.run_sync(replica.start)
        try:
            yield
        finally:
            if manage_replica:
                await anyio.to_thread.run_sync(replica.stop)

    app = FastAPI(
        title="freshet replica", version=freshet.__version__, description=DESCRIPTION, lifespan=lifespan
    )
    app.state.replica = replica
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    for module in (retrieve, items, state, health, metrics, admin):
        app.include_router(module.router)
    return app
