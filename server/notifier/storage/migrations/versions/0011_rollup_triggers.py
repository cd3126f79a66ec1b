"""data lifecycle: the rollups kept by row triggers, exact under concurrency (issue 15)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28

GetMetrics' rollups (0009) were kept by the writers themselves: each transaction read
its messages' contribution before and after its change and appended the difference to
the journal. On PostgreSQL that read was unlocked (two writers moving one message both
logged a move from the same old status: drift) and slow (two extra heavy statements in
the dispatcher's recording transaction). Here the database does it: AFTER row triggers
on messages, message_tags, delivery_attempts and status_events append the old row's
contribution negated and the new row's to the journal tables, inside the statement that
makes the change. Exact by construction (the trigger sees the row the statement
changed, under that statement's row lock), and no extra round trip.

Deletes have no trigger: retention and erasure never subtract from the rollups.
A message's creation time, channel, owner and sender never change after it is stored.

Every SQL text here is frozen (not built from the live code), and so is the histogram
(``histogram_lows``: slot i holds the delivery times in [low_i, low_i+1), as
notifier/domain/histogram.py's LOWS; a test checks they agree). The rollups are rebuilt
from the stored rows with the same frozen SQL.
"""

# ruff: noqa: S608 - every SQL text here is built from this file's own constants
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
_KEYS = "tag, bucket_ms, channel, owner, sender"
_STATUS_COLS = f"{_KEYS}, status, error_code, reconciled, stalled, fallback, n"
_DELIVERY_COLS = f"{_KEYS}, slot, n, total_ms, min_ms, max_ms"
_ATTEMPT_COLS = f"{_KEYS}, attempts, attempted, ambiguous"


def _lows() -> list[int]:
    """The histogram's slot starts as of this migration (0, 1, then x * 1.1 + 1 up to
    10**10 ms)."""
    lows = [0, 1]
    while lows[-1] < 10**10:
        lows.append(lows[-1] * 11 // 10 + 1)
    return lows


def _bucket(r: str) -> str:
    return f"{r}.created_at - {r}.created_at % {HOUR_MS}"


def _reconciled(r: str) -> str:
    return (
        "CASE WHEN EXISTS (SELECT 1 FROM status_events e WHERE e.message_id ="
        f" {r}.id AND e.source = 'reconcile' AND e.applied) THEN 1 ELSE 0 END"
    )


def _stalled(r: str) -> str:
    return f"CASE WHEN {r}.reconcile_outcome IS NULL THEN 0 ELSE 1 END"


def _fallback(r: str) -> str:
    return f"CASE WHEN {r}.fallback_of IS NULL THEN 0 ELSE 1 END"


def _dt(r: str) -> str:
    return (
        f"(CASE WHEN {r}.delivered_at > {r}.sent_at THEN {r}.delivered_at - {r}.sent_at ELSE 0 END)"
    )


def _slot(dt: str) -> str:
    return (
        "COALESCE((SELECT h.slot FROM histogram_lows h WHERE h.low <= "
        f"{dt} ORDER BY h.low DESC LIMIT 1), 0)"
    )


def _tags(message_id: str) -> str:
    """The tags a message counts under: "" (every message) and each of its own."""
    return (
        "(SELECT '' AS tag UNION ALL SELECT tag FROM message_tags"
        f" WHERE message_id = {message_id}) AS t"
    )


def _who(r: str) -> str:
    return f"t.tag, {_bucket(r)}, {r}.channel, {r}.caller, {r}.sender"


def _statuses(r: str, sign: str, source: str, where: str = "", reconciled: str = "") -> str:
    rec = reconciled or _reconciled(r)
    code = f"COALESCE({r}.error_code, 0)"
    return (
        f"SELECT {_who(r)}, {r}.status, {code}, {rec}, {_stalled(r)}, {_fallback(r)}, {sign}"
        f" FROM {source}{' WHERE ' + where if where else ''}"
    )


def _moved_status() -> str:
    """OLD's status row negated and NEW's, under each tag: one scan of the tags and one
    reconciled check for both (creation hour, channel, owner, sender never change)."""
    halves = " UNION ALL ".join(
        f"SELECT {r}.status AS status, COALESCE({r}.error_code, 0) AS error_code,"
        f" {_stalled(r)} AS stalled, {_fallback(r)} AS fallback, {sign} AS n"
        for r, sign in (("OLD", "-1"), ("NEW", "1"))
    )
    return (
        f"SELECT {_who('NEW')}, v.status, v.error_code, r.reconciled, v.stalled,"
        f" v.fallback, v.n FROM {_tags('NEW.id')} CROSS JOIN ({halves}) AS v"
        f" CROSS JOIN (SELECT {_reconciled('NEW')} AS reconciled) AS r"
    )


def _delivery(r: str, sign: str, source: str, where: str = "") -> str:
    dt = _dt(r)
    conds = f"{r}.sent_at IS NOT NULL AND {r}.delivered_at IS NOT NULL"
    return (
        f"SELECT {_who(r)}, {_slot(dt)}, {sign}, {sign} * {dt}, {dt}, {dt}"
        f" FROM {source} WHERE {conds}{' AND ' + where if where else ''}"
    )


def _of_message(message_id: str, tags: str | None = None) -> str:
    """FROM the message ``message_id`` (as m) under its tags (or the one ``tags``)."""
    tag_rows = tags if tags is not None else _tags(message_id)
    return f"messages AS m CROSS JOIN {tag_rows}"


_AMBIGUOUS_NEW = "CASE WHEN NEW.outcome = 'ambiguous' THEN 1 ELSE 0 END"
_AMBIGUOUS_OLD = "CASE WHEN OLD.outcome = 'ambiguous' THEN 1 ELSE 0 END"
_FIRST_RECONCILE = (
    "NOT EXISTS (SELECT 1 FROM status_events o WHERE o.message_id = NEW.message_id"
    " AND o.source = 'reconcile' AND o.applied AND o.id < NEW.id)"
)


def _triggers(distinct: str) -> list[tuple[str, str, str, str, list[str]]]:
    """(name, event, table, WHEN condition or "", statements)."""
    js = f"INSERT INTO journal_statuses ({_STATUS_COLS}) "
    jd = f"INSERT INTO journal_delivery ({_DELIVERY_COLS}) "
    ja = f"INSERT INTO journal_attempts ({_ATTEMPT_COLS}) "
    one_tag = "(SELECT NEW.tag AS tag) AS t"
    at_m = "m.id = NEW.message_id"
    return [
        (
            "messages_new",
            "INSERT",
            "messages",
            "",
            [
                js + _statuses("NEW", "1", _tags("NEW.id")),
                jd + _delivery("NEW", "1", _tags("NEW.id")),
            ],
        ),
        (
            "messages_status",
            "UPDATE",
            "messages",
            f"OLD.status {distinct} NEW.status OR OLD.error_code {distinct} NEW.error_code"
            " OR (OLD.reconcile_outcome IS NULL) <> (NEW.reconcile_outcome IS NULL)",
            [js + _moved_status()],
        ),
        (
            "messages_delivery",
            "UPDATE",
            "messages",
            f"OLD.sent_at {distinct} NEW.sent_at OR OLD.delivered_at {distinct} NEW.delivered_at",
            [
                jd
                + _delivery("OLD", "-1", _tags("OLD.id"))
                + " UNION ALL "
                + _delivery("NEW", "1", _tags("NEW.id"))
            ],
        ),
        (
            "tags_new",
            "INSERT",
            "message_tags",
            "",
            [
                js + _statuses("m", "1", _of_message("NEW.message_id", one_tag), at_m),
                jd + _delivery("m", "1", _of_message("NEW.message_id", one_tag), at_m),
                ja
                + f"SELECT NEW.tag, {_bucket('m')}, m.channel, m.caller, m.sender, count(a.id), 1,"
                " count(CASE WHEN a.outcome = 'ambiguous' THEN 1 END)"
                " FROM messages AS m JOIN delivery_attempts AS a ON a.message_id = m.id"
                f" WHERE {at_m} GROUP BY m.id, m.created_at, m.channel, m.caller, m.sender",
            ],
        ),
        (
            "attempts_new",
            "INSERT",
            "delivery_attempts",
            "",
            [
                ja + f"SELECT {_who('m')}, 1, CASE WHEN EXISTS (SELECT 1 FROM delivery_attempts o"
                " WHERE o.message_id = NEW.message_id AND o.id < NEW.id) THEN 0 ELSE 1 END,"
                f" {_AMBIGUOUS_NEW} FROM {_of_message('NEW.message_id')} WHERE {at_m}"
            ],
        ),
        (
            "attempts_outcome",
            "UPDATE",
            "delivery_attempts",
            "(OLD.outcome = 'ambiguous') <> (NEW.outcome = 'ambiguous')",
            [
                ja + f"SELECT {_who('m')}, 0, 0, {_AMBIGUOUS_NEW} - {_AMBIGUOUS_OLD}"
                f" FROM {_of_message('NEW.message_id')} WHERE {at_m}"
            ],
        ),
        (
            "events_reconciled",
            "INSERT",
            "status_events",
            "NEW.source = 'reconcile' AND NEW.applied",
            [
                js
                + _statuses(
                    "m", "-1", _of_message("NEW.message_id"), f"{at_m} AND {_FIRST_RECONCILE}", "0"
                )
                + " UNION ALL "
                + _statuses(
                    "m", "1", _of_message("NEW.message_id"), f"{at_m} AND {_FIRST_RECONCILE}", "1"
                )
            ],
        ),
    ]


def _rebuild() -> list[str]:
    """Every rollup from the stored rows (the triggers keep them from here on)."""
    tags = (
        "(SELECT id AS message_id, '' AS tag FROM messages"
        " UNION ALL SELECT message_id, tag FROM message_tags) AS t"
    )
    rows = f"messages AS m JOIN {tags} ON t.message_id = m.id"
    who = f"t.tag, {_bucket('m')} AS bucket_ms, m.channel, m.caller AS owner, m.sender"
    dt = _dt("m")
    attempts = (
        "(SELECT message_id, count(*) AS k, count(CASE WHEN outcome = 'ambiguous' THEN 1"
        " END) AS amb FROM delivery_attempts GROUP BY message_id) AS a"
    )
    stmts = [f"DELETE FROM {t}" for t in _ROLLUP_TABLES]
    stmts += [
        f"INSERT INTO rollup_statuses ({_STATUS_COLS}) SELECT {_KEYS}, status, error_code,"
        f" reconciled, stalled, fallback, count(*) FROM (SELECT {who}, m.status,"
        f" COALESCE(m.error_code, 0) AS error_code, {_reconciled('m')} AS reconciled,"
        f" {_stalled('m')} AS stalled, {_fallback('m')} AS fallback FROM {rows}) AS r"
        f" GROUP BY {_KEYS}, status, error_code, reconciled, stalled, fallback",
        f"INSERT INTO rollup_delivery ({_DELIVERY_COLS}) SELECT {_KEYS}, slot, count(*),"
        f" sum(dt), min(dt), max(dt) FROM (SELECT {who}, {dt} AS dt, {_slot(dt)} AS slot"
        f" FROM {rows} WHERE m.sent_at IS NOT NULL AND m.delivered_at IS NOT NULL) AS r"
        f" GROUP BY {_KEYS}, slot",
        f"INSERT INTO rollup_delivery_daily ({_DELIVERY_COLS}) SELECT {_KEYS}, slot, sum(n),"
        f" sum(total_ms), min(min_ms), max(max_ms) FROM (SELECT tag, bucket_ms - bucket_ms"
        f" % {DAY_MS} AS bucket_ms, channel, owner, sender, slot, n, total_ms, min_ms,"
        f" max_ms FROM rollup_delivery) AS r GROUP BY {_KEYS}, slot",
        f"INSERT INTO rollup_attempts ({_ATTEMPT_COLS}) SELECT {_KEYS}, sum(k), count(*),"
        f" sum(amb) FROM (SELECT {who}, a.k, a.amb FROM {rows} JOIN {attempts}"
        f" ON a.message_id = m.id) AS r GROUP BY {_KEYS}",
    ]
    return stmts


_ROLLUP_TABLES = (
    "journal_statuses",
    "journal_delivery",
    "journal_attempts",
    "rollup_statuses",
    "rollup_delivery",
    "rollup_delivery_daily",
    "rollup_attempts",
)


def upgrade() -> None:
    op.create_table(
        "histogram_lows",
        sa.Column("low", sa.BigInteger(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("low", name=op.f("pk_histogram_lows")),
    )
    lows = sa.table("histogram_lows", sa.column("low"), sa.column("slot"))
    op.bulk_insert(lows, [{"low": low, "slot": i} for i, low in enumerate(_lows())])
    for stmt in _rebuild():
        op.execute(sa.text(stmt))
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, event, table, when, body in _triggers("IS DISTINCT FROM" if postgres else "IS NOT"):
        statements = "; ".join(body)
        if postgres:
            op.execute(
                sa.text(
                    f"CREATE FUNCTION rollup_{name}() RETURNS trigger LANGUAGE plpgsql AS"
                    f" $fn$ BEGIN {statements}; RETURN NULL; END $fn$"
                )
            )
            condition = f" WHEN ({when})" if when else ""
            op.execute(
                sa.text(
                    f"CREATE TRIGGER rollup_{name} AFTER {event} ON {table} FOR EACH ROW"
                    f"{condition} EXECUTE FUNCTION rollup_{name}()"
                )
            )
        else:
            condition = f" WHEN {when}" if when else ""
            op.execute(
                sa.text(
                    f"CREATE TRIGGER rollup_{name} AFTER {event} ON {table} FOR EACH ROW"
                    f"{condition} BEGIN {statements}; END"
                )
            )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, _, table, _, _ in _triggers(""):
        if postgres:
            op.execute(sa.text(f"DROP TRIGGER rollup_{name} ON {table}"))
            op.execute(sa.text(f"DROP FUNCTION rollup_{name}()"))
        else:
            op.execute(sa.text(f"DROP TRIGGER rollup_{name}"))
    op.drop_table("histogram_lows")
