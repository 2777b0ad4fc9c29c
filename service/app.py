"""The FastAPI application: routes, middleware (limits, CORS, request ids) and the running services."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from . import admin, web
from .engine import SearchEngine
from .limits import Capacity, InFlightLimitMiddleware, UploadLimitMiddleware
from .observability import RequestObservationMiddleware, ServiceMetrics
from .routes import router
from .runtime import start_services, stop_services
from .settings import Settings
from .uploads import explain_validation_error

log = logging.getLogger("snap2shop.service")


def create_app(settings: Settings | None = None, engine: SearchEngine | None = None) -> FastAPI:
    """`engine` may be passed in already loaded (the CLI loads it first to fail fast and clearly)."""
    settings = settings or Settings.from_env()
    metrics = ServiceMetrics()
    capacity = Capacity(limit=settings.max_in_flight)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = app.state.preloaded_engine or SearchEngine.from_settings(settings)
        app.state.preloaded_engine = None  # the holder owns it from here on
        app.state.services = start_services(settings, loaded, metrics, capacity)
        try:
            yield
        finally:
            await stop_services(app.state.services)

    app = FastAPI(title="snap2shop", version="0.1.0", lifespan=lifespan,
                  description="Search a shop's catalogue by photo.")
    app.state.settings = settings
    app.state.preloaded_engine = engine
    app.include_router(router)
    app.include_router(admin.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    app.add_exception_handler(RequestValidationError, explain_validation_error)
    app.add_exception_handler(Exception, _internal_error)
    # Added innermost first: ids and logs wrap everything, so 413s and 503s are counted and logged too.
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(InFlightLimitMiddleware, capacity=capacity, on_reject=metrics.rejected.inc)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-Request-ID"], expose_headers=["X-Request-ID"])
    app.add_middleware(RequestObservationMiddleware, metrics=metrics)
    return app


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log under the request id; the client gets the id, never the trace.
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.error("internal error", exc_info=exc, extra={"request_id": request_id})
    return JSONResponse({"detail": "internal error; the operator can find it in the log by its request id",
                         "request_id": request_id}, status_code=500, headers={"x-request-id": request_id})
