"""One priced and reserved chat call: its hold kept alive while it runs, its settlement (riding
out a database restart), its upstream metrics and its chunks (api.chat_flow, api.chat_stream)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from starlette.concurrency import run_in_threadpool

from api.services import Services
from api.sse import sse_data
from common import billing, chat_billing, clock, ledger
from common.accounts import Principal
from common.catalog import ModelEntry
from common.chat_billing import Outcome, Reservation
from common.errors import ChargeUnconfirmed, HelyxError, NotFound, ServiceUnavailable, UpstreamRejectedRequest
from common.ledger import Settlement
from common.metrics import UPSTREAM_ERRORS, UPSTREAM_LATENCY
from common.money import MICRO
from common.providers.base import ChatProvider, ChatRequest
from common.providers.http import KNOWN_REFUSAL_CODES
from common.retrying import DATABASE_DOWN, while_database_down_async

log = logging.getLogger("helyx.api")
SETTLE_PATIENCE_SECONDS = 15.0  # ride out a database restart rather than leave the hold to its TTL
MAX_KEPT_SECONDS = 6 * 3600  # a hold is never kept alive longer, whatever happens to its call
SERVER_SHUTDOWN = "server_shutdown"  # a call cut off at the end of the shutdown grace
CLIENT_DISCONNECTED = "client_disconnected"  # a streamed call whose client left
T = TypeVar("T")
SETTLE_RETRY_SECONDS = 0.1  # a client is waiting: notice the database's return at once (a refused connect is cheap)


@dataclass
class ChatCall:
    """Everything one call needs once it has been priced and reserved."""

    services: Services
    principal: Principal
    entry: ModelEntry
    provider: ChatProvider
    request: ChatRequest
    reservation: Reservation
    id: str
    created: int
    started: float
    fingerprint: str | None
    headers: dict[str, str]
    log_fields: dict[str, Any]
    include_usage: bool = False  # stream_options.include_usage: the usage in a chunk of its own
    client_gone: bool = False  # the client left before the stream's first chunk (api.chat_stream)
    upstream_fingerprint: str | None = None  # the system_fingerprint a streaming upstream stated
    _keeper: asyncio.TimerHandle | None = field(default=None, repr=False)
    _extending: asyncio.Task[None] | None = field(default=None, repr=False)
    _since: float = field(default=0.0, repr=False)

    def keep_hold(self) -> None:
        """A call may outlive its hold's TTL (a long stream): the sweeper would then release the
        hold mid-call and the settlement find nothing to charge. Every third of the TTL, while
        the call runs, the hold's expiry moves on. A timer, not a task: a short call pays ~nothing.
        A process that dies stops renewing, and the hold is released at its expiry as before."""
        interval = self.services.settings.hold_ttl_seconds / 3
        self._since = time.monotonic()
        self._keeper = asyncio.get_running_loop().call_later(interval, self._extend_soon, interval)

    def _extend_soon(self, interval: float) -> None:
        self._extending = asyncio.ensure_future(self._extend(interval))

    async def _extend(self, interval: float) -> None:
        until = clock.now().timestamp() + self.services.settings.hold_ttl_seconds
        try:
            pg = self.services.pg
            if pg is not None:
                still_open = await chat_billing.extend_hold_async(pg, self.reservation.hold_id, until)
            else:
                still_open = await run_in_threadpool(self._extend_sync, until)
        except Exception as exc:  # noqa: BLE001 - the database is away: try again at the next beat
            log.warning("chat %s: its hold's expiry could not be moved on (%s)", self.id, type(exc).__name__)
            still_open = True
        if still_open and self._keeper is not None and time.monotonic() - self._since < MAX_KEPT_SECONDS:
            self._keeper = asyncio.get_running_loop().call_later(interval, self._extend_soon, interval)

    def _extend_sync(self, until: float) -> bool:
        with self.services.engine.begin() as conn:
            return ledger.extend_hold(conn, self.reservation.hold_id, until)

    async def finish(self, outcome: Outcome, stream: bool) -> Any:
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        try:
            settlement = await while_database_down_async(lambda: self._settle(outcome, stream),
                                                         patience=SETTLE_PATIENCE_SECONDS,
                                                         max_delay=SETTLE_RETRY_SECONDS)
        except DATABASE_DOWN as exc:
            if outcome.costs_nothing:  # a release: nothing is charged, whether it committed or not
                raise
            log.warning("chat %s: settlement unconfirmed (%s); its hold is released at expiry unless it "
                        "committed", self.id, type(exc).__name__)
            raise ChargeUnconfirmed(self.id) from exc
        usage = outcome.usage
        self.log_fields.update(
            model=self.entry.id, generation_id=self.id, outcome=outcome.status, credits=settlement.charged / MICRO,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )
        if settlement.available is None:  # resolved before (a retry after a lost reply): say what is left now
            try:
                left = await run_in_threadpool(billing.available, self.services.engine, self.principal.account_id)
            except DATABASE_DOWN as exc:  # the charge is confirmed: the answer goes out, what is left unsaid
                log.warning("chat %s: charged; the balance left could not be read (%s)", self.id, type(exc).__name__)
            else:
                settlement = dataclasses.replace(settlement, available=left)
        return settlement

    async def _settle(self, outcome: Outcome, stream: bool) -> Settlement:
        """One statement on the event loop in the common case; the transactional verbs otherwise."""
        try:
            return await self._settle_hold(outcome, stream)
        except NotFound as exc:
            if exc.code != "hold_not_found":
                raise
            # The reservation committed without waiting for the flush (common.ledger_pg) and
            # PostgreSQL crashed before flushing it: there is nothing to settle or to charge.
            log.warning("chat %s: its hold %s is gone (lost in a database crash?); nothing charged",
                        self.id, self.reservation.hold_id)
            raise ServiceUnavailable("The database restarted and lost this request's reservation; nothing was "
                                     "charged. Please retry.") from None

    async def finish_or_log(self, outcome: Outcome, stream: bool) -> Settlement | None:
        """`finish` where nobody may be left to tell (the client has gone, or the server cut the
        stream): a failure is logged, and None returned. The hold, if it still exists, is released
        at its expiry, so nothing is charged."""
        try:
            return await self.finish(outcome, stream)
        except Exception:
            log.exception("chat %s: the settlement failed after the stream was cut; nothing charged", self.id)
            return None

    async def _settle_hold(self, outcome: Outcome, stream: bool) -> Settlement:
        pg = self.services.pg
        day = billing.today(self.services.settings.timezone)
        if pg is not None:
            settled = await chat_billing.finish_chat_async(pg, self.principal, self.entry, self.reservation, outcome,
                                                           stream=stream, started=self.started, day=day)
            if settled is not None:
                return settled
        return await run_in_threadpool(lambda: chat_billing.finish_chat(
            self.services.engine, self.principal, self.entry, self.reservation, outcome, stream=stream,
            started=self.started, day=day))

    async def upstream(self, kind: str, attempt: Callable[[], Awaitable[T]], *, stream: bool) -> T:
        """The provider call (`attempt`, with its retries), timed and counted; one that fails
        releases the hold (a failed call costs nothing) and is raised."""
        since = time.perf_counter()
        try:
            result = await attempt()
        except BaseException as exc:
            cut = isinstance(exc, asyncio.CancelledError)  # the client left (a stream), or the server's shutdown
            if cut:  # nothing was produced: nothing is charged (and the wait is no measure of the provider)
                outcome = Outcome(self.id, "cancelled", None,
                                  error_code=CLIENT_DISCONNECTED if self.client_gone else SERVER_SHUTDOWN)
            else:
                self.upstream_done(since, kind, exc)
                outcome = Outcome(self.id, "failed", None, error_code=failure_code(exc))
            with anyio.CancelScope(shield=True):
                await self.finish(outcome, stream=stream)
            raise
        self.upstream_done(since, kind)
        return result

    def upstream_done(self, since: float, kind: str, error: BaseException | None = None) -> None:
        # A simulated answer (a fingerprint is set only then) is not a call to the catalog's provider:
        # counted apart, it cannot flatter that provider's latency or hide its errors.
        provider = "simulated" if self.fingerprint is not None else self.entry.provider
        UPSTREAM_LATENCY.labels(provider, kind).observe(time.perf_counter() - since)
        if error is not None:
            UPSTREAM_ERRORS.labels(provider, metric_code(error)).inc()

    @property
    def shown_fingerprint(self) -> str | None:
        """The simulated provider's, or the upstream's (a stream's chunks carry it as a plain answer does)."""
        return self.fingerprint or self.upstream_fingerprint

    def chunk(self, delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> bytes:
        return sse_data({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.entry.id,
            "system_fingerprint": self.shown_fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra,
        })


def failure_code(exc: BaseException) -> str:
    """The error code a failed call's record and metric name: ours, never a Python class name."""
    return exc.code if isinstance(exc, HelyxError) else "internal_error"


def metric_code(exc: BaseException) -> str:
    """The code a failed call's metric is labelled with: failure_code, but a refusal's own code
    only among those Helyx knows. A vendor's code naming a part of the request is passed on to
    the client as the vendor gave it (common.providers.http.client_fault); as a label, any code a
    vendor makes up would be one more time series on every scrape."""
    code = failure_code(exc)
    if isinstance(exc, UpstreamRejectedRequest) and code not in KNOWN_REFUSAL_CODES:
        return UpstreamRejectedRequest.code
    return code
