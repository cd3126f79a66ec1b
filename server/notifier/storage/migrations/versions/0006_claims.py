"""claims: how many times a message was claimed since its last recorded outcome

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

The poison-message guard (domain/poison.py): a message claimed again and again without
an outcome is failed instead of being sent to Twilio after every lease.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("claims", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("claims")
