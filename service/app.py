"""The FastAPI application: routes, the upload limit, and the engine loaded at start-up."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import web
from .engine import SearchEngine
from .limits import UploadLimitMiddleware
from .routes import router
from .settings import Settings

log = logging.getLogger("snap2shop.service")


def create_app(settings: Settings | None = None, engine: SearchEngine | None = None) -> FastAPI:
    """`engine` may be passed in already loaded (the CLI loads it first to fail fast and clearly)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if getattr(app.state, "engine", None) is None:
            app.state.engine = SearchEngine.from_settings(settings)
        yield

    app = FastAPI(title="snap2shop", version="0.1.0", lifespan=lifespan,
                  description="Search a shop's catalogue by photo.")
    app.state.settings = settings
    app.state.engine = engine
    app.include_router(router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    return app
