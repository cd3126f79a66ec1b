"""data lifecycle: metric rollups per creation hour, channel, owner, sender, tag; redacted
messages (issue 15)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28

Three tables (status, error code and reconciliation marks, delivery-time histogram
slots, send attempts) and their journals (changes not yet folded in), built from the
messages already stored by 0011 (which also adds the triggers that keep them), so
GetMetrics reads a few rows per hour and the figures survive retention's deletes.
Messages get a redacted flag (body, variables and media cleared by
NOTIFIER_REDACT_AFTER), indexed with updated_at for the purge.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_KEYS = ("tag", "bucket_ms", "channel", "owner", "sender")
_STATUS_DIMS = ("status", "error_code", "reconciled", "stalled", "fallback")


def _keys(journal: bool) -> list[sa.Column[Any]]:
    serial: list[sa.Column[Any]] = [
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        )
    ]
    return [
        *(serial if journal else []),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("bucket_ms", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=False),
    ]


def _pk(name: str, journal: bool, *dims: str) -> sa.PrimaryKeyConstraint:
    columns = ("id",) if journal else (*_KEYS, *dims)
    return sa.PrimaryKeyConstraint(*columns, name=op.f(f"pk_{name}"))


def _statuses(name: str, journal: bool) -> None:
    op.create_table(
        name,
        *_keys(journal),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=False),
        sa.Column("reconciled", sa.Integer(), nullable=False),
        sa.Column("stalled", sa.Integer(), nullable=False),
        sa.Column("fallback", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        _pk(name, journal, *_STATUS_DIMS),
    )


def _delivery(name: str, journal: bool) -> None:
    op.create_table(
        name,
        *_keys(journal),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("total_ms", sa.BigInteger(), nullable=False),
        sa.Column("min_ms", sa.BigInteger(), nullable=False),
        sa.Column("max_ms", sa.BigInteger(), nullable=False),
        _pk(name, journal, "slot"),
    )


def _attempts(name: str, journal: bool) -> None:
    op.create_table(
        name,
        *_keys(journal),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("attempted", sa.BigInteger(), nullable=False),
        sa.Column("ambiguous", sa.BigInteger(), nullable=False),
        _pk(name, journal),
    )


_TABLES = (
    ("rollup_statuses", _statuses, False),
    ("rollup_delivery", _delivery, False),
    ("rollup_delivery_daily", _delivery, False),
    ("rollup_attempts", _attempts, False),
    ("journal_statuses", _statuses, True),
    ("journal_delivery", _delivery, True),
    ("journal_attempts", _attempts, True),
)


def upgrade() -> None:
    op.add_column(
        "messages", sa.Column("redacted", sa.Boolean(), server_default="0", nullable=False)
    )
    op.create_index(op.f("ix_messages_redacted_updated_at"), "messages", ["redacted", "updated_at"])
    op.create_index(op.f("ix_idempotency_keys_message_id"), "idempotency_keys", ["message_id"])
    op.create_index(op.f("ix_inbound_messages_received_at"), "inbound_messages", ["received_at"])
    for name, create, journal in _TABLES:
        create(name, journal)


def downgrade() -> None:
    for name, _, _ in reversed(_TABLES):
        op.drop_table(name)
    op.drop_index(op.f("ix_inbound_messages_received_at"), table_name="inbound_messages")
    op.drop_index(op.f("ix_idempotency_keys_message_id"), table_name="idempotency_keys")
    op.drop_index(op.f("ix_messages_redacted_updated_at"), table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("redacted")
