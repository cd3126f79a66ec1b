"""reconciliation: per-message fetch state for messages whose callbacks did not come

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

The reconciler fetches from Twilio the messages Twilio holds that have had no news for
a while. Each message keeps how many fetches it has had since its last news, when the
next one is due, and why fetching stopped while it is still not final (gave up, or
Twilio no longer has it). The (status, updated_at) index finds the waiting messages
without a scan.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("reconcile_fetches", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("reconcile_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("reconcile_outcome", sa.String(length=16), nullable=True))
    op.create_index(
        op.f("ix_messages_status_updated_at"), "messages", ["status", "updated_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_messages_status_updated_at"), table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("reconcile_outcome")
        batch.drop_column("reconcile_at")
        batch.drop_column("reconcile_fetches")
