"""The routes' dependencies, in one place: the request's services, engine and settings, and the
admin token check."""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from .engine import SearchEngine
from .runtime import Services
from .settings import Settings


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_engine(request: Request) -> SearchEngine:
    """The engine current when the request starts; it stays this request's even across a reload."""
    return request.app.state.services.holder.engine


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


ServicesDep = Annotated[Services, Depends(get_services)]
EngineDep = Annotated[SearchEngine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        raise HTTPException(403, "admin endpoints are disabled: set SNAP2SHOP_ADMIN_TOKEN to enable them")
    scheme, _, given = (authorization or "").partition(" ")
    # compare_digest: the time taken must not tell an attacker how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "a valid admin token is required (Authorization: Bearer TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})
