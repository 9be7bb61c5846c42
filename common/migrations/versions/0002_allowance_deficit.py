"""accounts.allowance_deficit and deficit_day: allowance today's plan changes could not take back,
or that open holds kept over a plan change or a daily reset (common.ledger.change_plan, _reclaim)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 14:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allowance_deficit', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('deficit_day', sa.String(), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('deficit_day')
        batch_op.drop_column('allowance_deficit')
