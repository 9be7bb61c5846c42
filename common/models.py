"""The tables. The database is the truth: accounts, keys, holds, ledger, generations, jobs, files.

Conventions: money columns are BIGINT micro-credits (common.money); times are float seconds since
the epoch (UTC), which compare the same way on SQLite and PostgreSQL; billing days are ISO date
strings ('2026-11-22') in the configured zone. Ids are prefixed random strings.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, Index, Integer, String, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def _money(default: int = 0, nullable: bool = False) -> Column:
    return Column(BigInteger, nullable=nullable, default=default if not nullable else None)


class Account(SQLModel, table=True):
    __tablename__ = "accounts"
    __table_args__ = (
        Index("ix_accounts_created", "created_at", "id"),  # the admin list, oldest first (migration 0006)
        CheckConstraint("allowance >= 0", name="ck_accounts_allowance"),
        CheckConstraint("topup >= 0", name="ck_accounts_topup"),
        CheckConstraint("held >= 0", name="ck_accounts_held"),
        CheckConstraint("allowance + topup - held >= 0", name="ck_accounts_available"),
    )

    id: str = Field(primary_key=True)
    email: str = Field(unique=True, index=True)
    plan: str
    allowance: int = Field(sa_column=_money())  # what is left of today's allowance
    topup: int = Field(sa_column=_money())  # purchased credits, never expire
    held: int = Field(sa_column=_money())  # sum of open holds
    allowance_day: str  # the billing day `allowance` belongs to
    # Allowance today's plan changes could not take back (a downgrade after spending more than the
    # new plan's day: an upgrade the same day repays it first), or that open holds kept over a plan
    # change or a reset (taken back as they resolve). It counts only on `deficit_day`, the billing
    # day it was set for: a reset by a process that predates it leaves it behind, ignored.
    allowance_deficit: int = Field(sa_column=Column(BigInteger, nullable=False, default=0, server_default="0"))
    deficit_day: str = Field(sa_column=Column(String, nullable=False, default="", server_default=""))
    created_at: float


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True)
    account_id: str = Field(foreign_key="accounts.id", index=True)
    name: str = ""
    key_hash: str = Field(unique=True)  # sha256 hex of the full secret
    prefix: str  # display only, e.g. "hx-AbCdEf12"
    created_at: float
    last_used_at: float | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    daily_cap: int | None = Field(default=None, sa_column=_money(nullable=True))
    cap_used: int = Field(default=0, sa_column=_money())
    cap_day: str = ""


class Hold(SQLModel, table=True):
    """A reservation. Resolves exactly once: settled, released or expired."""

    __tablename__ = "holds"
    __table_args__ = (Index("ix_holds_status_expires", "status", "expires_at"),)

    id: str = Field(primary_key=True)
    account_id: str = Field(foreign_key="accounts.id", index=True)
    key_id: str | None = None
    amount: int = Field(sa_column=_money())
    charged: int | None = Field(default=None, sa_column=_money(nullable=True))
    status: str = "open"  # open | settled | released | expired
    purpose: str = ""  # e.g. "chat:chatcmpl-..." or "job:job_..."
    key_cap_day: str | None = None  # set when the hold counted against a key's daily cap
    created_at: float
    expires_at: float
    resolved_at: float | None = None


class LedgerEntry(SQLModel, table=True):
    """Append-only. sum(amount) == account balance; sum(held_delta) == account.held."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_account_created", "account_id", "created_at"),)

    # bigint on PostgreSQL (migration 0004); SQLite's INTEGER key is its 64-bit rowid
    id: int | None = Field(default=None,
                           sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True))
    account_id: str = Field(foreign_key="accounts.id")
    key_id: str | None = Field(default=None, index=True)
    kind: str  # reserve | settle | release | expire | grant | reset | plan
    amount: int = Field(sa_column=_money())
    held_delta: int = Field(sa_column=_money())
    reference: str = Field(unique=True)
    hold_id: str | None = None
    description: str = ""
    created_at: float


class Generation(SQLModel, table=True):
    """One chat completion, streamed or not, including cancelled streams."""

    __tablename__ = "generations"

    id: str = Field(primary_key=True)
    account_id: str = Field(index=True)
    key_id: str
    model: str
    stream: bool = False
    status: str  # succeeded | failed | cancelled
    prompt_tokens: int = 0
    completion_tokens: int = 0
    credits: int = Field(default=0, sa_column=_money())
    usage_estimated: bool = False
    latency_ms: int = 0
    error_code: str | None = None
    created_at: float


_WAITING = text("status = 'queued' AND attempts = 0 AND enqueued_at > created_at")
_WEBHOOK_UNSENT = text("webhook_url IS NOT NULL AND status IN ('succeeded', 'failed', 'canceled')"
                       " AND (webhook_status IS NULL OR webhook_status = 'pending')")


class Job(SQLModel, table=True):
    """A media job; its row is the truth, the broker only dispatches its id."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key", name="uq_jobs_idempotency"),
        Index("ix_jobs_status_enqueued", "status", "enqueued_at"),
        Index("ix_jobs_account_created", "account_id", "created_at"),
        # the claim's oldest job waiting for a slot (migration 0005)
        Index("ix_jobs_waiting", "account_id", "type", "created_at", postgresql_where=_WAITING, sqlite_where=_WAITING),
        # the sweeper's look for unsent webhooks (migration 0006)
        Index("ix_jobs_webhook_unsent", "finished_at", postgresql_where=_WEBHOOK_UNSENT, sqlite_where=_WEBHOOK_UNSENT),
    )

    id: str = Field(primary_key=True)
    account_id: str = Field(foreign_key="accounts.id")
    key_id: str
    type: str  # image | video
    model: str
    params: str = Field(sa_column=Column(Text, nullable=False))  # JSON
    status: str = "queued"  # queued | running | succeeded | failed | canceled
    progress: int = 0
    attempts: int = 0
    lease_owner: str | None = None
    lease_until: float | None = None
    hold_id: str
    price: int = Field(sa_column=_money())
    charged: int = Field(default=0, sa_column=_money())
    error_code: str | None = None
    error_message: str | None = None
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON list of file ids
    idempotency_key: str | None = None
    request_hash: str | None = None
    webhook_url: str | None = None
    webhook_status: str | None = None  # pending | delivered | failed
    webhook_pending_at: float | None = None  # when the send was taken in hand (a stale one is sent again)
    created_at: float
    enqueued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None


class StoredFile(SQLModel, table=True):
    __tablename__ = "files"

    id: str = Field(primary_key=True)
    account_id: str = Field(index=True)
    job_id: str = Field(index=True)
    storage_key: str
    content_type: str
    bytes: int
    created_at: float
    expires_at: float = Field(index=True)
