"""The application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors
from api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from api.routes import account, admin, health
from api.services import Services
from common.db import get_engine
from common.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    services = Services(settings=settings, engine=get_engine(settings.database_url))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(
        title="Helyx",
        version="0.1.0",
        description="OpenAI-compatible AI API gateway with exact credit billing.",
        lifespan=lifespan,
    )
    app.state.services = services
    errors.install(app)
    for module in (health, account, admin):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id"])
    app.add_middleware(RequestIdMiddleware)
    return app
