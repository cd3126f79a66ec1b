"""The fields of admin notifications: checks that report every violation at once, and
the one-line, fixed-locale texts admins read (tests check them word for word)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notifier.domain.errors import Violation
from notifier.domain.templates import check_variables
from notifier.domain.validation import CONTENT_SID

# A display field longer than this is cut with "…": a 5,000-character product name
# must not push the order's id and total out of a 1,600-character WhatsApp message.
MAX_FIELD = 200
# Ids become part of idempotency keys ("order:{id}:{+E.164}"), which the store keeps
# at most 255 characters long; these limits leave room for the prefix and the number.
MAX_ID = 128
MAX_EMAIL = 254  # RFC 5321's limit on a forward path
ELLIPSIS = "…"

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def one_line(value: str, limit: int = MAX_FIELD) -> str:
    """A field as one line of at most ``limit`` characters, cut with "…" when longer.

    Line breaks inside a name would break the layout admins scan, so runs of
    whitespace become single spaces.
    """
    text = " ".join(value.split())
    if len(text) > limit:
        return text[: limit - 1] + ELLIPSIS
    return text


def format_when(ms: int, zone: tzinfo, zone_name: str) -> str:
    """e.g. "Sat 21 Nov 2026, 14:30 (Europe/Madrid)".

    Day and month names come from fixed English tables instead of strftime's %a/%b,
    which follow the process locale.
    """
    moment = (_EPOCH + timedelta(milliseconds=ms)).astimezone(zone)
    day, month = _DAYS[moment.weekday()], _MONTHS[moment.month - 1]
    return f"{day} {moment.day} {month} {moment.year}, {moment:%H:%M} ({zone_name})"


def time_zone(name: str, path: str, bad: list[Violation]) -> tuple[tzinfo, str]:
    if not name or name == "UTC":
        return UTC, "UTC"
    try:
        return ZoneInfo(name), name
    except (ZoneInfoNotFoundError, ValueError):
        bad.append(Violation(path, "is not an IANA time zone, e.g. Europe/Madrid"))
        return UTC, "UTC"


def check_time(ms: int | None, path: str, required: bool, bad: list[Violation]) -> int | None:
    if ms is None:
        if required:
            bad.append(Violation(path, "is required"))
        return None
    try:
        moment = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        moment = None
    # A day of margin at both ends, so a time zone's offset cannot overflow either.
    if moment is None or not 1 < moment.year < 9999:
        bad.append(Violation(path, "is out of range"))
        return None
    return ms


def check_id(value: str, path: str, bad: list[Violation], limit: int = MAX_ID) -> None:
    """Ids become idempotency keys: required, bounded, printable, no stray spaces."""
    if not value:
        bad.append(Violation(path, "is required"))
    elif len(value) > limit:
        bad.append(Violation(path, f"is longer than {limit} characters"))
    elif not value.isprintable() or value.strip() != value:
        bad.append(Violation(path, "must be printable, without surrounding spaces"))


def check_text(value: str, path: str, bad: list[Violation]) -> None:
    if not value.strip():
        bad.append(Violation(path, "is required"))


def check_email(value: str, path: str, bad: list[Violation]) -> None:
    if not value.strip():
        bad.append(Violation(path, "is required"))
    elif len(value) > MAX_EMAIL:
        bad.append(Violation(path, f"is longer than {MAX_EMAIL} characters"))
    elif not _EMAIL.match(value):
        bad.append(Violation(path, "is not an email address, e.g. ana@example.com"))


def check_template(
    content_sid: str, variables: Mapping[str, str], bad: list[Violation]
) -> str | None:
    """The same rules as SendMessage's content_sid and variables."""
    if content_sid and not CONTENT_SID.match(content_sid):
        bad.append(Violation("content_sid", "must be a Content SID: HX followed by 32 hex digits"))
    if variables and not content_sid:
        bad.append(Violation("variables", "only with content_sid"))
    check_variables(variables, bad)
    return content_sid or None


def more_items(n: int) -> str:
    return f"{ELLIPSIS} and {n} more item{'' if n == 1 else 's'}"
