"""Typed dependencies of the routes: the replica and settings of *this* app, and the admin guard."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.errors import AdminDisabledError, AdminForbiddenError
from serving.replica import Replica
from serving.settings import Settings, env_var


def get_replica(request: Request) -> Replica:
    replica: Replica = request.app.state.replica
    return replica


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ReplicaDep = Annotated[Replica, Depends(get_replica)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="the replica's admin token")


def require_admin(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Admin endpoints: disabled without a configured token, else the bearer token must match it."""
    if not settings.admin_enabled():
        raise AdminDisabledError(
            f"admin endpoints are disabled on this replica: start it with --admin-token or {env_var('admin_token')}"
        )
    assert settings.admin_token is not None
    if credentials is None:
        raise AdminForbiddenError("admin endpoints need 'Authorization: Bearer <admin token>'")
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise AdminForbiddenError("wrong admin token")
