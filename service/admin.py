"""Operator endpoints, behind a bearer token from SNAP2SHOP_ADMIN_TOKEN (disabled when unset)."""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

router = APIRouter(prefix="/admin", tags=["admin"])


def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        raise HTTPException(403, "admin endpoints are disabled: set SNAP2SHOP_ADMIN_TOKEN to enable them")
    scheme, _, given = (authorization or "").partition(" ")
    # compare_digest: the time taken must not tell an attacker how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "a valid admin token is required (Authorization: Bearer TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})


@router.post("/reload", dependencies=[Depends(require_admin)],
             summary="Load the index version now published (no request fails during the swap)",
             responses={409: {"description": "the published version could not be loaded; the old one still serves"}})
async def reload(request: Request,
                 force: Annotated[bool, Query(description="reload even if that version is already served")] = False):
    outcome = await run_in_threadpool(request.app.state.services.holder.reload, force)
    return JSONResponse(outcome.to_dict(), status_code=409 if outcome.error else 200)
