"""FastAPI dependencies: services, the caller's principal (auth), the admin guard."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from api.errors import unknown_route
from api.services import Services
from common import accounts, billing, clock
from common.accounts import Principal
from common.errors import AuthenticationFailed


async def get_services(request: Request) -> Services:
    """Async on purpose: FastAPI runs a plain `def` dependency in the thread pool, a hop per request."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def bearer(request: Request) -> str | None:
    """The key an `Authorization: Bearer` header presents. Two such headers are a 401: a proxy in
    front that reads the last one would vouch for another caller than the first one Helyx reads."""
    values = request.headers.getlist("authorization")
    if not values:
        return None
    if len(values) > 1:
        raise AuthenticationFailed("Send one Authorization header, not several.")
    header = values[0]
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _authenticate(services: Services, presented: str | None) -> Principal:
    now = clock.now().timestamp()
    principal = accounts.authenticate(services.engine, presented, now=now)
    _after_authentication(services, principal, now)
    return principal


def _after_authentication(services: Services, principal: Principal, now: float) -> None:
    """The daily reset the account may be due, and the key's last use (once a minute)."""
    billing.apply_daily_reset(services.engine, principal.account_id, principal.allowance_day,
                              services.settings.timezone)
    accounts.touch_key(services.engine, principal, now=now)


def _remember(request: Request, principal: Principal) -> None:
    request.state.principal = principal
    fields = getattr(request.state, "log", None)
    if fields is not None:
        fields.update(account_id=principal.account_id, key_prefix=principal.key_prefix)


async def authenticate(request: Request, services: Services) -> Principal:
    """The caller's principal. On PostgreSQL the key lookup runs on the event loop; only the
    rare writes (a daily reset, the once-a-minute last use) take a trip to the thread pool."""
    if services.pg is None:
        principal = await run_in_threadpool(_authenticate, services, bearer(request))
        _remember(request, principal)
        return principal
    now = clock.now().timestamp()
    principal = await accounts.authenticate_async(services.pg, bearer(request), now=now)
    await after_lookup(request, services, principal, now)
    return principal


async def after_lookup(request: Request, services: Services, principal: Principal, now: float) -> bool:
    """After a key lookup on the event loop: the rare writes (the account's daily reset, the key's
    last use) in the thread pool, and the caller remembered for the logs. True when a daily
    reset ran (what was read with the key, the balance, is then out of date)."""
    reset_due = billing.reset_due(principal.allowance_day, services.settings.timezone)
    if reset_due or accounts.needs_touch(principal, now):
        await run_in_threadpool(_after_authentication, services, principal, now)
    _remember(request, principal)
    return reset_due


async def get_principal(request: Request) -> Principal:
    """The services straight from the app, not through ServicesDep: every dependency FastAPI
    resolves costs a few tens of microseconds on every request."""
    return await authenticate(request, request.app.state.services)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def key_checked_in_route(request: Request) -> None:
    """For a route that looks the caller's key up itself, together with its first write (chat:
    api.chat_admission). A dependency runs before the body is validated: should the body fail,
    the validation handler (api.errors) looks the key up first, so a bad key is a 401 before a 400
    about the body's fields, as on every other route. (A body that is not JSON at all is a 400
    before the key on every route: FastAPI reads it before any dependency.)

    A missing or malformed key (its checksum: no I/O) is refused here and now, so an anonymous
    client cannot have the loop validate 4 MiB of content parts (~0.5 s each) for its 401. The
    checksum is no secret (anyone can make a well-formed key), so a large body's key is also looked
    up now, before its validation: the small bodies of most chats keep their one statement."""
    accounts.refuse_malformed(bearer(request))
    if len(await request.body()) > LOOKUP_FIRST_BYTES:  # (read already: FastAPI parsed it as JSON)
        await authenticate(request, request.app.state.services)
    request.state.key_unchecked = True


LOOKUP_FIRST_BYTES = 64 * 1024


KeyCheckedInRoute = Depends(key_checked_in_route)


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller's key, checked by `authenticate()` inside the route's own trip to the thread
    pool: without the event loop's PostgreSQL (SQLite), the hot reads (job and video polls)
    then make one trip instead of two."""

    request: Request
    services: Services
    token: str | None

    def authenticate(self) -> Principal:
        """In a worker thread: the same checks as PrincipalDep."""
        principal = _authenticate(self.services, self.token)
        _remember(self.request, principal)
        return principal


def caller_of(request: Request) -> Caller:
    return Caller(request, request.app.state.services, bearer(request))


async def get_caller(request: Request) -> Caller:
    return caller_of(request)


CallerDep = Annotated[Caller, Depends(get_caller)]


async def require_admin(request: Request, services: ServicesDep) -> None:
    """The admin routes exist only when HELYX_ADMIN_TOKEN is set; the token is compared in
    constant time. Without a configured token they answer 404, as if absent."""
    configured = services.settings.admin_token
    if configured is None or not configured.get_secret_value():
        raise unknown_route(request)
    presented = bearer(request) or ""
    if not hmac.compare_digest(presented.encode(), configured.get_secret_value().encode()):
        raise AuthenticationFailed("Invalid admin token.", code="invalid_admin_token")
