"""The schema. Times are epoch milliseconds (BIGINT): exact, portable, cheap in SQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from notifier.domain.model import Status

OUTBOX = (Status.PENDING.value, Status.SCHEDULED.value)
"""Statuses of messages waiting in the outbox (not yet handed to Twilio)."""

IN_OUTBOX = f"status IN ({', '.join(repr(s) for s in OUTBOX)})"
"""The outbox as literal SQL: the claim's index is partial over it, and a
planner uses a partial index only for a query that states the same condition in
literals (not bound parameters)."""
CLAIM_INDEX = "ix_messages_priority_next_attempt_at_id"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _serial_id() -> Column[int]:
    """An auto-increment key: BIGINT on PostgreSQL, SQLite's INTEGER rowid alias."""
    return Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )


def _message_ref(*, primary_key: bool = False, index: bool = False) -> Column[str]:
    """The message a row belongs to; deleting the message deletes the row."""
    return Column(
        "message_id",
        String(26),
        ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=primary_key,
        nullable=False,
        index=index or None,
    )


messages = Table(
    "messages",
    metadata,
    Column("id", String(26), primary_key=True),  # ULID: sorts by creation time
    Column("caller", String(128), nullable=False, server_default=""),
    Column("channel", String(16), nullable=False),
    Column("to_addr", String(32), nullable=False),
    Column("body", Text),
    Column("content_sid", String(34)),
    Column("variables", Text),  # JSON object
    Column("media_urls", Text),  # JSON array
    Column("status", String(16), nullable=False),
    Column("twilio_sid", String(34), unique=True),
    Column("error_code", Integer),
    Column("error_message", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("send_at", BigInteger),
    Column("expires_at", BigInteger),
    Column("next_attempt_at", BigInteger),  # when the dispatcher may take it
    Column("priority", Integer, nullable=False, server_default="0"),  # 0 first; bulk is 1
    Column("lease_owner", String(64)),
    Column("lease_expires_at", BigInteger),
    Column("traceparent", String(55)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # When each success-path status was first reached (from callbacks, in any order):
    # kept here so delivery times and metrics are plain column arithmetic in SQL.
    Column("sent_at", BigInteger),
    Column("delivered_at", BigInteger),
    Column("read_at", BigInteger),
    # Claims since the last recorded outcome (issue 13: the poison-message guard).
    Column("claims", Integer, nullable=False, server_default="0"),
    # Reconciliation (issue 18): fetches from Twilio since the last news, when the next
    # one is due, and why fetching stopped for a message still not final.
    Column("reconcile_fetches", Integer, nullable=False, server_default="0"),
    Column("reconcile_at", BigInteger),
    Column("reconcile_outcome", String(16)),
    # The sender profile (NOTIFIER_SENDERS) it goes out from: its From and rate limit.
    Column("sender", String(64), nullable=False, server_default="default"),
    # Body, variables and media cleared by NOTIFIER_REDACT_AFTER (issue 15).
    Column("redacted", Boolean, nullable=False, server_default="0"),
    # SMS fallback (issue 17): what the caller asked for, and on a fallback SMS the
    # WhatsApp message it stands in for (unique: at most one fallback per message).
    Column("fallback_sms", Boolean, nullable=False, server_default="0"),
    Column("fallback_body", Text),
    Column("fallback_of", String(26)),
    Column("fallback_reason", String(32)),
    Index(None, "fallback_of", unique=True),
    # created_at and id too: GetMetrics' backlog figures, with or without a tag, read
    # the index alone (migration 0012).
    Index(None, "status", "next_attempt_at", "created_at", "id"),
    Index(None, "status", "updated_at"),
    # The dispatcher's claim walks this (CLAIM_INDEX) in claim order and stops at its LIMIT. Over
    # (status, priority, next_attempt_at) every claim sorted the whole due backlog: 35 ms
    # on PostgreSQL and 21 ms on SQLite at 100,000 queued (migration 0014).
    Index(
        None,
        "priority",
        "next_attempt_at",
        "id",
        sqlite_where=text(IN_OUTBOX),
        postgresql_where=text(IN_OUTBOX),
    ),
    Index(None, "created_at"),
    Index(None, "to_addr", "created_at"),
    Index(None, "sender", "created_at"),
    Index(None, "redacted", "updated_at"),  # the purge's oldest-first batches
)

message_tags = Table(
    "message_tags",
    metadata,
    _message_ref(primary_key=True),
    Column("tag", String(64), primary_key=True),
    Index(None, "tag", "message_id"),
)

status_events = Table(
    "status_events",
    metadata,
    _serial_id(),
    _message_ref(index=True),
    Column("status", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("occurred_at", BigInteger, nullable=False),
    Column("error_code", Integer),
    Column("applied", Boolean, nullable=False, server_default="1"),
    Column("actor", String(64)),  # the caller token's name, for operator actions
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("caller", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    _message_ref(index=True),  # retention deletes a message's key with it
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    _serial_id(),
    _message_ref(index=True),
    Column("number", Integer, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
    Column("outcome", String(16), nullable=False),
    Column("http_status", Integer),
    Column("error_code", Integer),
    Column("error_message", Text),
    Column("twilio_sid", String(34)),
    Column("worker", String(64)),
)

inbound_messages = Table(
    "inbound_messages",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("message_sid", String(34), unique=True),
    Column("from_addr", String(32), nullable=False),  # E.164, no prefix
    Column("to_addr", String(48), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("body", Text),
    Column("media", Text),  # JSON array of {"url", "content_type"}
    Column("profile_name", String(256)),
    Column("wa_id", String(32)),
    Column("received_at", BigInteger, nullable=False),
    Index(None, "from_addr", "received_at"),
    Index(None, "received_at"),  # retention, oldest first
)

recipients = Table(
    "recipients",
    metadata,
    Column("channel", String(16), primary_key=True),
    Column("address", String(32), primary_key=True),  # E.164
    Column("opted_out", Boolean, nullable=False, server_default="0"),
    Column("opted_out_at", BigInteger),
    Column("last_inbound_at", BigInteger),  # opens the 24-hour WhatsApp window
    # A WhatsApp send failed with 63024 (not on WhatsApp): skip WhatsApp until then.
    Column("not_on_whatsapp_until", BigInteger),
    Column("updated_at", BigInteger, nullable=False),
)

send_slots = Table(
    "send_slots",
    metadata,
    Column("sender", String(64), primary_key=True),
    # The earliest time (epoch microseconds, the database's clock) at which the next
    # send of this sender may start, across all replicas.
    Column("next_slot_us", BigInteger, nullable=False),
)

# A slot that must start later than its place on the grid: the slot N before it was
# used late (migration 0013). Taken, and deleted, with the slot.
send_slot_delays = Table(
    "send_slot_delays",
    metadata,
    Column("sender", String(64), primary_key=True),
    Column("place_us", BigInteger, primary_key=True),  # the slot's place on the grid
    Column("not_before_us", BigInteger, nullable=False),
)


# GetMetrics' rollups (issue 15): per hour of creation, channel, owner (the caller that
# stored the message), sender profile and tag ("" = every message; a tagged message also
# counts under each of its tags). Never decremented by retention, so the figures survive
# the purge and a 30-day window reads a few thousand rows. Keys lead with the tag
# (always given: "" for all) and then the hour, so a window is one range of the key.
#
# Writers never update these rows: row triggers (migration 0011) on messages,
# message_tags, delivery_attempts and status_events append what each statement changed
# to the journal tables (plain INSERTs, no shared row to wait for), and the
# background folder (storage/rollups.py ``fold_journal``) moves journal rows into the
# rollups. GetMetrics reads rollups plus the journal, so it is exact at any moment.
def _rollup_keys(journal: bool) -> list[Column[Any]]:
    key = not journal
    return [
        Column("tag", String(64), primary_key=key, nullable=False),
        Column("bucket_ms", BigInteger, primary_key=key, nullable=False),  # creation hour
        Column("channel", String(16), primary_key=key, nullable=False),
        Column("owner", String(128), primary_key=key, nullable=False),
        Column("sender", String(64), primary_key=key, nullable=False),
    ]


def _journal_id(journal: bool) -> list[Column[Any]]:
    return [_serial_id()] if journal else []


def _statuses_table(name: str, journal: bool = False) -> Table:
    key = not journal
    return Table(
        name,
        metadata,
        *_journal_id(journal),
        *_rollup_keys(journal),
        Column("status", String(16), primary_key=key, nullable=False),
        Column("error_code", Integer, primary_key=key, nullable=False),  # 0: none
        # 1: a reconcile fetch moved the message (GetMetrics' reconciled).
        Column("reconciled", Integer, primary_key=key, nullable=False),
        # 1: the reconciler stopped seeking its outcome (GetMetrics' unconfirmed).
        Column("stalled", Integer, primary_key=key, nullable=False),
        # 1: an SMS fallback of a failed WhatsApp message (GetMetrics' fallbacks).
        Column("fallback", Integer, primary_key=key, nullable=False),
        Column("n", BigInteger, nullable=False),
    )


def _delivery_table(name: str, journal: bool = False) -> Table:
    return Table(
        name,
        metadata,
        *_journal_id(journal),
        *_rollup_keys(journal),
        Column("slot", Integer, primary_key=not journal, nullable=False),  # histogram slot
        Column("n", BigInteger, nullable=False),
        Column("total_ms", BigInteger, nullable=False),
        Column("min_ms", BigInteger, nullable=False),
        Column("max_ms", BigInteger, nullable=False),
    )


def _attempts_table(name: str, journal: bool = False) -> Table:
    return Table(
        name,
        metadata,
        *_journal_id(journal),
        *_rollup_keys(journal),
        Column("attempts", BigInteger, nullable=False),
        Column("attempted", BigInteger, nullable=False),  # messages with any attempt
        Column("ambiguous", BigInteger, nullable=False),
    )


rollup_statuses = _statuses_table("rollup_statuses")
# The same per UTC day (migration 0012): a month of hours held 21,000 status rows at
# 1,000,000 messages, 12 ms of a 30-day GetMetrics; whole days are read from here.
rollup_statuses_daily = _statuses_table("rollup_statuses_daily")
rollup_delivery = _delivery_table("rollup_delivery")
# The same per UTC day (bucket_ms: the day's start): a histogram is a few dozen rows per
# hour, so a month of whole days is read from here and only the ragged hours from above.
rollup_delivery_daily = _delivery_table("rollup_delivery_daily")
rollup_attempts = _attempts_table("rollup_attempts")
journal_statuses = _statuses_table("journal_statuses", journal=True)
journal_delivery = _delivery_table("journal_delivery", journal=True)
journal_attempts = _attempts_table("journal_attempts", journal=True)

# The delivery-time histogram's slot starts (domain/histogram.py LOWS), for the row
# triggers of migration 0011 that keep the rollups: slot = the row with the largest low
# <= the delivery time.
histogram_lows = Table(
    "histogram_lows",
    metadata,
    Column("low", BigInteger, primary_key=True),
    Column("slot", Integer, nullable=False),
)
