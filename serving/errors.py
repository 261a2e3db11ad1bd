"""Errors of the serving layer, and the one place where errors become HTTP status codes.

The core's errors know nothing about HTTP; ``install_error_handlers`` maps them. Every handler answers
``{"detail": "<what went wrong and what to do>"}`` like FastAPI's own errors.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from freshet.errors import FreshetError

log = logging.getLogger(__name__)


class ServingError(FreshetError):
    """Base of the replica's own errors."""


class InvalidRequestError(ServingError):
    """A request that is well-formed JSON but makes no sense for this model (wrong dim, unknown bit, ...)."""


class ItemNotFoundError(ServingError):
    """No such item in the model."""


class AdminDisabledError(ServingError):
    """The admin endpoints are off because no admin token is configured."""


class AdminForbiddenError(ServingError):
    """Missing or wrong bearer token."""


class NotReadyError(ServingError):
    """The replica cannot answer this yet."""


def _status_of(exc: FreshetError) -> int:
    from freshet.retrieval import QueryError
    from serving.models import ModelSwitchError

    if isinstance(exc, InvalidRequestError | QueryError):
        return 422
    if isinstance(exc, ItemNotFoundError | AdminDisabledError):
        return 404
    if isinstance(exc, AdminForbiddenError):
        return 403
    if isinstance(exc, NotReadyError):
        return 503
    if isinstance(exc, ModelSwitchError):
        return 409
    return 500  # snapshot and model errors: the replica's fault or its disk's, never the request's


async def _freshet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FreshetError)
    status = _status_of(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AdminForbiddenError) else None
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FreshetError, _freshet_error)
