"""target agent labels: agent-declared labels and group kept apart from trusted ones

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 01:50:00.000000

Existing labels stay trusted (they cannot be told apart any more); from now on the
labels an agent declares go to ``agent_labels``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("targets", schema=None) as batch_op:
        # The default fills the existing rows; new rows get theirs from the application,
        # like every other JSON column (PostgreSQL cannot compare json defaults).
        batch_op.add_column(
            sa.Column("agent_labels", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.add_column(
            sa.Column("group_from_agent", sa.Boolean(), nullable=False,
                      server_default=sa.false())
        )
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.alter_column("agent_labels", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.drop_column("group_from_agent")
        batch_op.drop_column("agent_labels")
