"""whatsapp fallback: per-message SMS fallback, its link, and who is not on WhatsApp

Revision ID: 0010
Revises: 0008
Create Date: 2026-11-28

A WhatsApp message may ask for one SMS when it fails with a fallback code
(``fallback_sms``, ``fallback_body``). The SMS is a message of its own whose
``fallback_of`` names the original; the unique index on it is what makes the fallback
exactly-once: it is inserted in the transaction that records the failure, and a second
insert for the same original cannot commit. ``recipients.not_on_whatsapp_until`` keeps
the 63024 mark (a number that is not on WhatsApp) until its TTL runs out.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("fallback_sms", sa.Boolean(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("fallback_body", sa.Text(), nullable=True))
        batch.add_column(sa.Column("fallback_of", sa.String(length=26), nullable=True))
        batch.add_column(sa.Column("fallback_reason", sa.String(length=32), nullable=True))
    op.create_index(op.f("ix_messages_fallback_of"), "messages", ["fallback_of"], unique=True)
    with op.batch_alter_table("recipients") as batch:
        batch.add_column(sa.Column("not_on_whatsapp_until", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recipients") as batch:
        batch.drop_column("not_on_whatsapp_until")
    op.drop_index(op.f("ix_messages_fallback_of"), table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("fallback_reason")
        batch.drop_column("fallback_of")
        batch.drop_column("fallback_body")
        batch.drop_column("fallback_sms")
