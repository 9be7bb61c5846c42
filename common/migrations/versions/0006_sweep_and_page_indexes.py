"""Two indexes that keep periodic and paged reads from growing with the tables' history.

ix_jobs_webhook_unsent: finished jobs with a webhook not yet delivered (never sent, or in hand),
for the sweeper's look for unsent webhooks (common.jobs.recovery.unsent_webhooks), which every
worker process runs every few seconds. Without it that look read the whole `jobs` table each
time (65-83 ms and ~136 MB of pages at 300,000 jobs, finding nothing almost always); with it, a
few pages. Partial: a job enters it only while its webhook waits, and jobs without one never do.

ix_accounts_created: accounts oldest first, for the operator's list (`GET /admin/accounts`): each
page was a scan and a sort of every account (5 ms at 20,000 accounts, so a walk through them all
grew with their square). Neither column ever changes, so balance updates stay HOT.

On PostgreSQL CREATE INDEX blocks writes to the table while it reads it; each waits at most 15 s
for its lock, then fails rather than queue every statement behind it; run it again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 10:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

WEBHOOK_UNSENT = sa.text("webhook_url IS NOT NULL AND status IN ('succeeded', 'failed', 'canceled')"
                         " AND (webhook_status IS NULL OR webhook_status = 'pending')")


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("SET LOCAL lock_timeout = '15s'")
    op.create_index('ix_jobs_webhook_unsent', 'jobs', ['finished_at'], unique=False,
                    postgresql_where=WEBHOOK_UNSENT, sqlite_where=WEBHOOK_UNSENT)
    op.create_index('ix_accounts_created', 'accounts', ['created_at', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_accounts_created', table_name='accounts')
    op.drop_index('ix_jobs_webhook_unsent', table_name='jobs')
