"""Operator endpoints, behind a bearer token from SNAP2SHOP_ADMIN_TOKEN (disabled when unset)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .deps import require_admin

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload", dependencies=[Depends(require_admin)],
             summary="Load the index version now published (no request fails during the swap)",
             responses={409: {"description": "the published version could not be loaded; the old one still serves"}})
async def reload(request: Request,
                 force: Annotated[bool, Query(description="reload even if that version is already served")] = False):
    outcome = await run_in_threadpool(request.app.state.services.holder.reload, force)
    return JSONResponse(outcome.to_dict(), status_code=409 if outcome.error else 200)
