"""send slots: one row per sender shared by every replica's rate limiter

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-21

On PostgreSQL several replicas send for one sender; each takes its send times from this
row so that together they never exceed the sender's rate. (SQLite has the table too,
unused: one schema for both backends.)

MERGE NOTE: revision 0005 (tracing) is being written on another branch. This branch does
not have it, so 0006 revises 0004 here; when both are merged, set down_revision to
"0005" (two heads otherwise, and `notifier db upgrade` refuses to guess).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
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
