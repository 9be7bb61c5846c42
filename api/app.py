"""The application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from api import errors, openapi
from api.middleware import BodyLimitMiddleware, FallbackAnswerMiddleware, RequestIdMiddleware
from api.observability import InFlight, ObservabilityMiddleware
from api.recent_keys import RecentKeys
from api.routes import (
    account,
    admin,
    chat,
    files,
    generations,
    health,
    images,
    jobs,
    metrics,
    models,
    videos,
    webhooks,
)
from api.services import Services
from common import billing, serve_lock
from common.catalog import load_catalog
from common.db import get_engine
from common.gc_tuning import freeze_startup_heap, tune_for_requests
from common.metrics import DatabaseCollector, use_database_collector
from common.pg_async import AsyncStatements
from common.providers.http import build_http_client
from common.providers.registry import Providers
from common.ratelimit import RateLimiter
from common.retrying import is_unreachable
from common.settings import Settings, get_settings
from common.signing import load_or_create_secret
from common.storage import LocalStorage

log = logging.getLogger("helyx.api")
DRAIN_SECONDS = 5.0  # at shutdown, for requests cut at the grace's end to settle and log (api.observability)


# What the OpenAI JS SDK reads in a browser (retry decisions, rate limits, video polling): a
# cross-origin response shows a script only the headers listed here.
EXPOSED_HEADERS = ["x-request-id", "x-generation-id", "x-should-retry", "retry-after", "x-ratelimit-limit-requests",
                   "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "openai-poll-after-ms",
                   "content-range", "accept-ranges", "etag", "content-disposition"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    services = Services(settings=settings, engine=get_engine(settings.database_url))
    services.extras["catalog"] = load_catalog(settings)
    services.extras["limiter"] = RateLimiter(settings)
    services.extras["recent_keys"] = RecentKeys()
    services.extras["storage"] = LocalStorage(settings.storage_dir)
    secret = settings.secret_key.get_secret_value() if settings.secret_key else None
    services.extras["signing_secret"] = load_or_create_secret(secret, settings.storage_dir)
    services.extras["enqueue"], services.extras["notify"] = _enqueuer()

    in_flight = InFlight()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The production shape's API process holds the serve lock shared for its life (refusing to
        # start beside a self-contained serve, which would release its calls' holds, and keeping
        # one from starting beside it, however this process's parent ends); the self-contained
        # serve holds it exclusively itself (cli.single_instance).
        lock = None if settings.self_contained else await run_in_threadpool(serve_lock.share_database, settings)
        http = build_http_client(settings.upstream_connect_timeout, settings.upstream_read_timeout)
        services.extras["providers"] = Providers(services.catalog, settings, http)
        services.pg = AsyncStatements.for_engine(services.engine)  # bound to this event loop
        sweeper = asyncio.create_task(_sweep_holds(services))
        freeze_startup_heap()
        tune_for_requests()
        try:
            yield
        finally:
            if not await in_flight.drained(DRAIN_SECONDS):
                log.warning("shutdown: %d request(s) still running after %g s", in_flight.count, DRAIN_SECONDS)
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await http.aclose()
            pg, services.pg = services.pg, None
            if pg is not None:
                await pg.close_idle()
            if lock is not None:
                lock.close()

    app = FastAPI(
        title="Helyx",
        version="0.1.0",
        description="OpenAI-compatible AI API gateway with exact credit billing.",
        lifespan=lifespan,
        # A trailing slash is a 404 in the error shape, not a bare 307 to the path without it
        # (`/jobs/%2F` led to the job list; an SDK never adds one).
        redirect_slashes=False,
        # Off unless asked for: with it on, FastAPI looks up three OpenTelemetry providers on every
        # request (~20 us each time, even with none configured).
        telemetry={"tracing": settings.opentelemetry, "metrics": settings.opentelemetry,
                   "logs": settings.opentelemetry},
    )
    app.state.services = services
    errors.install(app)
    openapi.install(app)
    # Routes are matched in order, one regex each: the hot ones first (matching the chat route
    # took 32 us when it came after the others, a job poll 44 us; no two routers share a path).
    for module in (chat, jobs, images, videos, files, health, metrics, models, generations, account, webhooks):
        _serve_routes(app, module.router)
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        _serve_routes(app, admin.router)  # absent otherwise: a 404 for every method and body, as any unknown path
    app.add_middleware(FallbackAnswerMiddleware)  # innermost: what it answers is logged, counted and given CORS headers
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=EXPOSED_HEADERS)
    docs = frozenset(p for p in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if p)
    app.add_middleware(ObservabilityMiddleware, in_flight=in_flight, fixed_paths=docs)
    app.add_middleware(RequestIdMiddleware)
    _register_collector(services)
    return app


def _serve_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes become the app's own, as `@app.get(...)` would add them. Through
    `app.include_router`, FastAPI (0.16x) keeps a router whole, as one route of the app, and
    matches a request against each router's routes twice (once to choose the router, once inside
    it): ~60 us more per request for a route behind ten routers. Our routers carry their full
    prefix and have nothing else for the app to apply (no dependencies, tags or responses of the
    inclusion). One thing is lost: `app.dependency_overrides` does not reach these routes (their
    handlers are built without the app as their overrides' provider); nothing here uses it. Nor do
    app-wide dependencies (`FastAPI(dependencies=...)`) reach them: refused here, not ignored."""
    assert not app.router.dependencies, "app-wide dependencies would not run on these routes"
    app.router.routes.extend(router.routes)


async def _sweep_holds(services: Services) -> None:
    """Release holds that outlived their TTL (a crashed process's reservations)."""
    while True:
        await asyncio.sleep(services.settings.hold_sweep_interval_seconds)
        try:
            await run_in_threadpool(billing.expire_holds, services.engine)
        except Exception as exc:
            if not is_unreachable(exc):
                log.exception("hold sweep failed")
            else:  # one line, not a traceback each sweep, for as long as the outage lasts
                log.warning("hold sweep skipped: the database is unavailable (%s)", type(exc).__name__)


def _enqueuer():
    """The API only sends: it imports the actor handles (and so the one broker set-up)."""
    from workers.actors import deliver_webhook, enqueue

    return enqueue, deliver_webhook.send


def _register_collector(services: Services) -> None:
    use_database_collector(DatabaseCollector(services.engine, _queue_depth_reader(services.settings)))


def _queue_depth_reader(settings: Settings):
    from workers.broker import broker

    def depth() -> dict[str, int]:
        sizes = {}
        for name in ("images", "videos", "webhooks"):
            sizes[name] = queue_size(broker, name)
            sizes[f"{name}.delayed"] = delayed_size(broker, name)
        return sizes

    return depth


def queue_size(broker, name: str) -> int:
    """Waiting messages (not yet delivered) in a Dramatiq queue, Redis or in-process."""
    queues = getattr(broker, "queues", {})
    if hasattr(broker, "client"):
        return int(broker.client.llen(f"{broker.namespace}:{name}"))
    queue = queues.get(name)
    return queue.qsize() if queue is not None else 0


def delayed_size(broker, name: str) -> int:
    """Messages of a queue waiting for their time: a retry's backoff, or a job waiting for a free
    running-job slot of its account (a backlog the ready queue alone shows as 0). On Redis, what a
    worker has fetched and holds until then counts too: it is not running either."""
    delay_queue = f"{name}.DQ"
    if hasattr(broker, "client"):
        return int(broker.client.hlen(f"{broker.namespace}:{delay_queue}.msgs"))
    queue = getattr(broker, "queues", {}).get(delay_queue)
    # in process, a worker takes a delayed message off its queue at once and holds it until its
    # time: the queue's unfinished count (down only at the message's ack) still has it
    return queue.unfinished_tasks if queue is not None else 0
