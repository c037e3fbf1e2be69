"""policy serial

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 02:35:47.301197
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "policy_serial",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_serial")),
    )
    op.bulk_insert(table, [{"id": 1, "serial": 1}])


def downgrade() -> None:
    op.drop_table("policy_serial")
