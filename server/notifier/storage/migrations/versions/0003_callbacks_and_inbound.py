"""status times, inbound messages and recipients

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21

First-reached times of sent/delivered/read on messages (for delivery times and
metrics in SQL), inbound messages, and per-recipient opt-out and 24-hour window.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("delivered_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("read_at", sa.BigInteger(), nullable=True))
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("message_sid", sa.String(length=34), nullable=True),
        sa.Column("from_addr", sa.String(length=32), nullable=False),
        sa.Column("to_addr", sa.String(length=48), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("media", sa.Text(), nullable=True),
        sa.Column("profile_name", sa.String(length=256), nullable=True),
        sa.Column("wa_id", sa.String(length=32), nullable=True),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_messages")),
        sa.UniqueConstraint("message_sid", name=op.f("uq_inbound_messages_message_sid")),
    )
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inbound_messages_from_addr_received_at"),
            ["from_addr", "received_at"],
            unique=False,
        )
    op.create_table(
        "recipients",
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=32), nullable=False),
        sa.Column("opted_out", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("opted_out_at", sa.BigInteger(), nullable=True),
        sa.Column("last_inbound_at", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("channel", "address", name=op.f("pk_recipients")),
    )


def downgrade() -> None:
    op.drop_table("recipients")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_messages_from_addr_received_at"))
    op.drop_table("inbound_messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("read_at")
        batch_op.drop_column("delivered_at")
        batch_op.drop_column("sent_at")
