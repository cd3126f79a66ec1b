"""send slot delays: a late send moves only the slot N after it, not the whole grid

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28

Replicas share one grid of send slots per sender (0005). A send that started more than
half the guard after its slot used to move the whole grid on by its overrun, so every
late send cost every later slot; the lateness added up (80/s gave 76.9-78.5/s with two
replicas). Only the slot N after it (a window later) needs to move: each row here says
how late that slot may start at the earliest. The replica that takes the slot takes
the row with it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_slot_delays",
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("place_us", sa.BigInteger(), nullable=False),
        sa.Column("not_before_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sender", "place_us", name=op.f("pk_send_slot_delays")),
    )


def downgrade() -> None:
    op.drop_table("send_slot_delays")
