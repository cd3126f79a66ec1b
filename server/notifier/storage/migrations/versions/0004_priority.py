"""claim priority

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21

Single sends (priority 0) are claimed before bulk items (priority 1) that are due.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index(
            batch_op.f("ix_messages_status_priority_next_attempt_at"),
            ["status", "priority", "next_attempt_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_status_priority_next_attempt_at"))
        batch_op.drop_column("priority")
