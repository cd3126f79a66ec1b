"""How the CLI shows replies: rich tables for people, JSON for scripts (``--json``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message as ProtoMessage
from rich.console import Console
from rich.table import Table
from rich.text import Text

from notifier_client.types import channel_name, status_name
from notifier_proto.v1 import notifier_pb2 as pb


def as_dict(message: ProtoMessage) -> dict[str, Any]:
    """A reply as JSON-ready data with the proto's own field names (as grpcurl shows)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def when(ts: timestamp_pb2.Timestamp) -> str:
    """A Timestamp as ``2026-01-02 10:00:00.123Z``; empty when unset."""
    if not ts.seconds and not ts.nanos:
        return ""
    at = datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _add(table: Table, *cells: str) -> None:
    """A row of plain text: server text such as ``items[x]`` must never read as markup."""
    table.add_row(*(Text(c) for c in cells))


def _error(code: int, message: str) -> str:
    return f"{code} {message}".strip() if code else ""


def message_table(msg: pb.Message) -> Table:
    table = Table(title=f"message {msg.message_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows: list[tuple[str, str]] = [
        ("status", status_name(msg.status)),
        ("channel", channel_name(msg.channel)),
        ("to", msg.to),
        ("twilio_sid", msg.twilio_sid),
        ("tags", ", ".join(msg.tags)),
        ("created", when(msg.timestamps.created)),
        ("attempts", str(msg.attempts)),
        ("error", _error(msg.error_code, msg.error_message)),
        ("delivery_time_ms", str(msg.delivery_time_ms) if msg.delivery_time_ms else ""),
        ("send_at", when(msg.send_at)),
        ("expires_at", when(msg.expires_at)),
        ("next_attempt_at", when(msg.next_attempt_at)),
        ("updated_at", when(msg.updated_at)),
    ]
    for name, value in rows:
        if value:
            _add(table, name, value)
    return table


def status_tables(reply: pb.GetDeliveryStatusResponse) -> list[Table]:
    """The message, its status history and its attempts."""
    history = Table(title="history")
    for col in ("status", "at", "source", "error", "applied"):
        history.add_column(col)
    for e in reply.history:
        applied = "yes" if e.applied else "no (out of order)"
        _add(
            history,
            status_name(e.status),
            when(e.occurred_at),
            e.source,
            _error(e.error_code, ""),
            applied,
        )
    attempts = Table(title="attempts")
    for col in ("#", "started", "finished", "outcome", "http", "error"):
        attempts.add_column(col)
    for a in reply.attempts:
        _add(
            attempts,
            str(a.number),
            when(a.started_at),
            when(a.finished_at),
            a.outcome,
            str(a.http_status or ""),
            _error(a.error_code, a.error_message),
        )
    return [message_table(reply.message), history, attempts]


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def metrics_tables(m: pb.GetMetricsResponse) -> list[Table]:
    """Totals and rates, the count per status, and the error codes."""
    summary = Table(title="metrics", show_header=False)
    summary.add_column("metric", style="bold")
    summary.add_column("value", justify="right")
    age = m.oldest_pending_age.seconds + m.oldest_pending_age.nanos / 1e9
    for name, value in (
        ("total", str(m.total)),
        ("delivery rate", _pct(m.delivery_rate)),
        ("read rate", _pct(m.read_rate)),
        ("failure rate", _pct(m.failure_rate)),
        ("delivery time avg", f"{m.avg_delivery_time_ms:.0f} ms"),
        ("delivery time p50", f"{m.p50_delivery_time_ms:.0f} ms"),
        ("delivery time p95", f"{m.p95_delivery_time_ms:.0f} ms"),
        ("retries", str(m.retries)),
        ("ambiguous outcomes", str(m.ambiguous_outcomes)),
        ("queue depth", str(m.queue_depth)),
        ("oldest pending", f"{age:.1f} s"),
        ("scheduled", str(m.scheduled)),
    ):
        _add(summary, name, value)
    by_status = Table(title="by status")
    by_status.add_column("status")
    by_status.add_column("count", justify="right")
    for c in m.by_status:
        _add(by_status, status_name(c.status), str(c.count))
    errors = Table(title="error codes")
    for col in ("code", "meaning", "count"):
        errors.add_column(col)
    for e in m.error_codes:
        _add(errors, str(e.error_code), e.error_message, str(e.count))
    return [summary, by_status, errors]


def messages_table(messages: list[pb.Message]) -> Table:
    table = Table(title=f"{len(messages)} message(s), newest first")
    for col in ("id", "status", "channel", "to", "tags", "attempts", "error", "created"):
        table.add_column(col)
    for m in messages:
        _add(
            table,
            m.message_id,
            status_name(m.status),
            channel_name(m.channel),
            m.to,
            ", ".join(m.tags),
            str(m.attempts),
            _error(m.error_code, m.error_message),
            when(m.timestamps.created),
        )
    return table


def watch_line(update: pb.WatchDeliveryStatusResponse) -> str:
    event = update.event
    error = f"  error {event.error_code}" if event.error_code else ""
    source = f"  ({event.source})" if event.source else ""
    at = when(event.occurred_at) or when(update.message.updated_at)
    return f"{at}  {update.message_id}  {status_name(update.status)}{source}{error}"


def print_tables(console: Console, tables: list[Table]) -> None:
    for table in tables:
        if table.row_count or table.show_header is False:
            console.print(table)


def dump(data: Any) -> None:
    """JSON for scripts: one document per line on stdout, flushed (watch streams them)."""
    print(json.dumps(data), flush=True)
