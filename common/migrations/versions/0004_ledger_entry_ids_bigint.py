"""ledger_entries.id as bigint on PostgreSQL: a 32-bit id runs out after 2.1e9 rows (each chat writes
two: about a billion calls), and then every movement of credits fails. SQLite's INTEGER PRIMARY KEY
is the 64-bit rowid already (and a BIGINT key there would stop being it), so SQLite is left alone.

On PostgreSQL the ALTER rewrites the table under an exclusive lock: on a large ledger, run it in a
quiet window (`helyx migrate`). It waits at most 15 s for that lock (older processes' transactions
on the ledger), then fails rather than queue every ledger statement behind it; run it again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 21:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("SET LOCAL lock_timeout = '15s'")
    op.execute('ALTER TABLE ledger_entries ALTER COLUMN id TYPE bigint')
    op.execute('ALTER SEQUENCE ledger_entries_id_seq AS bigint MAXVALUE 9223372036854775807')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('ALTER SEQUENCE ledger_entries_id_seq AS integer MAXVALUE 2147483647')
    op.execute('ALTER TABLE ledger_entries ALTER COLUMN id TYPE integer')
