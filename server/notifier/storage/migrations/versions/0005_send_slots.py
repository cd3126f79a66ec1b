"""send slots: one row per sender shared by every replica's rate limiter

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21

On PostgreSQL several replicas send for one sender; each takes its send times from this
row so that together they never exceed the sender's rate. (SQLite has the table too,
unused: one schema for both backends.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_slots",
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("next_slot_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sender", name=op.f("pk_send_slots")),
    )


def downgrade() -> None:
    op.drop_table("send_slots")
