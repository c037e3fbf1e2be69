"""dead letters for unstorable result batches; the agent's own time of a skewed result

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 01:45:00.000000

``dead_letters`` holds result batches the ingest worker set aside because they could not be
stored (server/jobs/dead_letters.py). ``check_results.agent_executed_at`` keeps the agent's
timestamp of a result whose clock lay outside the window the server trusts; the row's
``executed_at`` is then the server's receive time.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=True),
        sa.Column("results", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("batch", sa.LargeBinary(), nullable=False),
        sa.Column("set_aside_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index(
        op.f("ix_dead_letters_set_aside_at"), "dead_letters", ["set_aside_at"], unique=False
    )
    with op.batch_alter_table("check_results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("agent_executed_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("check_results", schema=None) as batch_op:
        batch_op.drop_column("agent_executed_at")
    op.drop_index(op.f("ix_dead_letters_set_aside_at"), table_name="dead_letters")
    op.drop_table("dead_letters")
