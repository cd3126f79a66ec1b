"""senders and actors: the sender profile of each message, who did an operator action

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28

Issue 16. ``messages.sender`` names the sender profile (NOTIFIER_SENDERS) the message is
sent from, "default" for every message stored before profiles existed. The index serves
the sender filter of ListMessages and GetMetrics. ``status_events.actor`` names the
caller token that canceled or re-queued a message (empty for every other event).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("sender", sa.String(length=64), nullable=False, server_default="default")
        )
        batch.create_index(op.f("ix_messages_sender_created_at"), ["sender", "created_at"])
    with op.batch_alter_table("status_events") as batch:
        batch.add_column(sa.Column("actor", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("status_events") as batch:
        batch.drop_column("actor")
    with op.batch_alter_table("messages") as batch:
        batch.drop_index(op.f("ix_messages_sender_created_at"))
        batch.drop_column("sender")
