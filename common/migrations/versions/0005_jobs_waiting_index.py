"""ix_jobs_waiting: an account's jobs waiting for a slot of the running-jobs cap for their first
run (queued, never run, sent again), oldest first, for the claim that gives a freed slot to the
oldest (common.jobs.transition_sql.OLDEST_WAITING). Partial: small however long the account's history,
which the claim would otherwise walk through on ix_jobs_account_created from its first job on.

On PostgreSQL CREATE INDEX blocks writes to `jobs` while it reads the table; it waits at most
15 s for its lock, then fails rather than queue every job statement behind it; run it again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 15:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

WAITING = sa.text("status = 'queued' AND attempts = 0 AND enqueued_at > created_at")


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("SET LOCAL lock_timeout = '15s'")
    op.create_index('ix_jobs_waiting', 'jobs', ['account_id', 'type', 'created_at'], unique=False,
                    postgresql_where=WAITING, sqlite_where=WAITING)


def downgrade() -> None:
    op.drop_index('ix_jobs_waiting', table_name='jobs')
