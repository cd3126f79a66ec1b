"""Admin notifications (NotifyOrder, NotifyAdmins): validation and the text admins read.

Pure domain code: no gRPC, no storage. Each notification is checked field by field
(every violation reported at once, as SendMessage does) and turned into an ``Alert``:
the text to send (or a Content template), the idempotency key that deduplicates it,
and the canonical payload whose hash tells a retry from a different notification.
Money lives in ``domain/money.py`` (exact decimals), the field checks and the
fixed-locale texts in ``domain/fields.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from decimal import ROUND_HALF_UP, Context, Decimal

from notifier.domain.errors import DomainError, IdempotencyConflict, ValidationFailed, Violation
from notifier.domain.fields import (
    MAX_FIELD,
    check_email,
    check_id,
    check_template,
    check_text,
    check_time,
    format_when,
    more_items,
    one_line,
    time_zone,
)
from notifier.domain.model import Accepted, Channel, NewMessage, Status
from notifier.domain.money import (
    canonical_amount,
    check_currency,
    format_money,
    line_total,
    parse_money,
)
from notifier.domain.validation import (
    MAX_BODY,
)

log = logging.getLogger(__name__)

MAX_KEY = 200
TAG = "admin-notification"


# -- requests as the caller wrote them ------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderItem:
    title: str
    quantity: int
    unit_price: str  # exact decimal string in the order's currency


@dataclass(frozen=True, slots=True)
class OrderRequest:
    order_id: str
    customer_name: str
    customer_email: str
    items: Sequence[OrderItem]
    total: str
    currency: str
    content_sid: str = ""
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Booking:
    booking_id: str
    customer_name: str
    customer_email: str
    item: str
    starts_at_ms: int | None
    quantity: int
    time_zone: str = ""


@dataclass(frozen=True, slots=True)
class LowStock:
    product_id: str
    product_name: str
    sku: str
    current_stock: int
    threshold: int


@dataclass(frozen=True, slots=True)
class EventCapacity:
    event_id: str
    event_name: str
    registered: int
    capacity: int
    starts_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Custom:
    title: str
    body: str


Notification = Booking | LowStock | EventCapacity | Custom


@dataclass(frozen=True, slots=True)
class AdminRequest:
    notification: Notification | None
    idempotency_key: str = ""
    content_sid: str = ""
    variables: Mapping[str, str] = field(default_factory=dict)


# -- what comes out -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """A validated notification, ready to become one message per admin.

    ``key`` is the idempotency key without the recipient (``order:A-1``); each
    admin's message gets ``{key}:{number}`` so every admin's copy is deduplicated on
    its own. None means no deduplication (a custom text without idempotency_key).
    ``payload`` is the validated request in canonical form; its hash distinguishes a
    retry (same hash: the first result again) from a reused id (ALREADY_EXISTS). It
    holds the request, not the rendered text, so a change of wording in a new
    version of Notifier does not turn a retry into a conflict.
    """

    kind: str
    key: str | None
    text: str
    payload: dict[str, object]
    content_sid: str | None = None
    variables: dict[str, str] = field(default_factory=dict)

    def idempotency_key(self, admin: str) -> str | None:
        return f"{self.key}:{admin}" if self.key is not None else None

    def message_to(self, admin: str) -> NewMessage:
        """The WhatsApp message one admin gets: the template when one was given (it
        works outside the 24-hour window), the formatted text otherwise."""
        return NewMessage(
            to=admin,
            channel=Channel.WHATSAPP,
            body=None if self.content_sid else self.text,
            content_sid=self.content_sid,
            variables=dict(self.variables) if self.content_sid else {},
            tags=(TAG, f"notify:{self.kind}"),
            idempotency_key=self.idempotency_key(admin),
        )


@dataclass(frozen=True, slots=True)
class AdminDelivery:
    to: str
    message_id: str
    status: Status


@dataclass(frozen=True, slots=True)
class AdminNotified:
    """The messages sent (or found, for a replay) for one notification."""

    deliveries: tuple[AdminDelivery, ...]
    replayed: bool


# -- orders ---------------------------------------------------------------------------


def order_text(
    order_id: str,
    customer_name: str,
    customer_email: str,
    lines: Sequence[str],
    total: str,
    limit: int = MAX_BODY,
) -> str:
    """The seed's order alert, with as many item lines as fit in ``limit`` characters.

    When every line does not fit, the list keeps its first lines and ends with
    "… and N more items": admins still see who ordered, what the order starts with
    and the total, which a message cut in the middle (or refused by Twilio for its
    length) would lose.
    """
    head = (
        "🛒 *New Order Received!*\n\n"
        f"Order ID: {one_line(order_id)}\n"
        f"Customer: {one_line(customer_name)}\n"
        f"Email: {one_line(customer_email)}\n\n"
        "*Items:*\n"
    )
    tail = f"\n\n*Total: {total}*\n\nView details in admin dashboard."
    full = head + "\n".join(lines) + tail
    if len(full) <= limit:
        return full
    kept: list[str] = []
    for line in lines:
        candidate = [*kept, line, more_items(len(lines) - len(kept) - 1)]
        if len(head + "\n".join(candidate) + tail) > limit:
            break
        kept.append(line)
    return head + "\n".join([*kept, more_items(len(lines) - len(kept))]) + tail


def validate_order(req: OrderRequest) -> Alert:
    """Check every field of an order; the alert to send, or ValidationFailed with all
    problems.

    The total is not compared with the sum of the lines: it may include shipping,
    taxes or discounts the items do not show, and the admins want the caller's figure.
    """
    bad: list[Violation] = []
    check_id(req.order_id, "order_id", bad)
    check_text(req.customer_name, "customer_name", bad)
    check_email(req.customer_email, "customer_email", bad)
    currency = check_currency(req.currency, "currency", bad)
    if not req.items:
        bad.append(Violation("items", "at least one item is required"))
    prices: list[Decimal | None] = []
    for i, item in enumerate(req.items):
        check_text(item.title, f"items[{i}].title", bad)
        if item.quantity < 1:
            bad.append(Violation(f"items[{i}].quantity", "must be at least 1"))
        prices.append(parse_money(item.unit_price, currency, f"items[{i}].unit_price", bad))
    total = parse_money(req.total, currency, "total", bad)
    content_sid = check_template(req.content_sid, req.variables, bad)
    if bad:
        raise ValidationFailed(bad)
    assert currency is not None  # no violation: parsed
    assert total is not None
    lines = []
    items: list[list[object]] = []
    for item, price in zip(req.items, prices, strict=True):
        assert price is not None
        amount = format_money(line_total(price, item.quantity), currency)
        lines.append(f"• {one_line(item.title)} (x{item.quantity}) - {amount}")
        items.append([item.title, item.quantity, canonical_amount(price, currency)])
    text = order_text(
        req.order_id, req.customer_name, req.customer_email, lines, format_money(total, currency)
    )
    payload: dict[str, object] = {
        "kind": "order",
        "order_id": req.order_id,
        "customer_name": req.customer_name,
        "customer_email": req.customer_email,
        "items": items,
        "total": canonical_amount(total, currency),
        "currency": currency,
        "content_sid": content_sid,
        "variables": dict(sorted(req.variables.items())),
    }
    return Alert(
        kind="order",
        key=f"order:{req.order_id}",
        text=text,
        payload=payload,
        content_sid=content_sid,
        variables=dict(req.variables),
    )


# -- the other notifications ----------------------------------------------------------


def _booking(n: Booking, p: str, bad: list[Violation]) -> tuple[str, str, dict[str, object]]:
    check_id(n.booking_id, f"{p}booking_id", bad)
    check_text(n.customer_name, f"{p}customer_name", bad)
    check_email(n.customer_email, f"{p}customer_email", bad)
    check_text(n.item, f"{p}item", bad)
    starts = check_time(n.starts_at_ms, f"{p}starts_at", True, bad)
    if n.quantity < 1:
        bad.append(Violation(f"{p}quantity", "must be at least 1"))
    zone, zone_name = time_zone(n.time_zone, f"{p}time_zone", bad)
    when = format_when(starts, zone, zone_name) if starts is not None else ""
    text = (
        "📅 *New Booking!*\n\n"
        f"Booking ID: {one_line(n.booking_id)}\n"
        f"Customer: {one_line(n.customer_name)}\n"
        f"Email: {one_line(n.customer_email)}\n"
        f"What: {one_line(n.item)}\n"
        f"When: {when}\n"
        f"Quantity: {n.quantity}\n\n"
        "View details in admin dashboard."
    )
    payload: dict[str, object] = {
        "booking_id": n.booking_id,
        "customer_name": n.customer_name,
        "customer_email": n.customer_email,
        "item": n.item,
        "starts_at_ms": n.starts_at_ms,
        "quantity": n.quantity,
        "time_zone": zone_name,
    }
    return text, n.booking_id, payload


def _low_stock(n: LowStock, p: str, bad: list[Violation]) -> tuple[str, str, dict[str, object]]:
    """Stock may be negative (oversold): that is when admins most need the alert. It
    must be at or below the threshold, as the contract defines the notification; an
    alert above it is a caller's bug that would only train admins to ignore alerts."""
    check_id(n.product_id, f"{p}product_id", bad)
    check_text(n.product_name, f"{p}product_name", bad)
    if n.threshold < 0:
        bad.append(Violation(f"{p}threshold", "must not be negative"))
    elif n.current_stock > n.threshold:
        bad.append(
            Violation(f"{p}current_stock", f"is above the threshold ({n.threshold}): not low")
        )
    sku = f"SKU: {one_line(n.sku)}\n" if n.sku.strip() else ""
    text = (
        "⚠️ *Low Stock Alert*\n\n"
        f"Product: {one_line(n.product_name)}\n"
        f"{sku}"
        f"In stock: {n.current_stock}\n"
        f"Threshold: {n.threshold}\n\n"
        "Restock soon to keep it available."
    )
    payload: dict[str, object] = {
        "product_id": n.product_id,
        "product_name": n.product_name,
        "sku": n.sku,
        "current_stock": n.current_stock,
        "threshold": n.threshold,
    }
    return text, f"{n.product_id}:{n.current_stock}", payload


def fill_percent(registered: int, capacity: int) -> Decimal:
    """registered / capacity as a whole percentage, rounded half up, in exact Decimal
    arithmetic (100 digits of precision are far beyond what two int64 values need)."""
    share = Context(prec=100).divide(Decimal(registered) * 100, Decimal(capacity))
    return share.quantize(Decimal(1), rounding=ROUND_HALF_UP)


def _event(n: EventCapacity, p: str, bad: list[Violation]) -> tuple[str, str, dict[str, object]]:
    """Registered may exceed capacity (an overbooked event); the percentage then reads
    over 100, which is what the admins need to see."""
    check_id(n.event_id, f"{p}event_id", bad)
    check_text(n.event_name, f"{p}event_name", bad)
    if n.registered < 0:
        bad.append(Violation(f"{p}registered", "must not be negative"))
    if n.capacity < 1:
        bad.append(Violation(f"{p}capacity", "must be at least 1"))
    starts = check_time(n.starts_at_ms, f"{p}starts_at", False, bad)
    percent = fill_percent(n.registered, n.capacity) if n.capacity >= 1 else Decimal(0)
    when = f"Starts: {format_when(starts, UTC, 'UTC')}\n" if starts is not None else ""
    text = (
        "🎟️ *Event Filling Up*\n\n"
        f"Event: {one_line(n.event_name)}\n"
        f"Registered: {n.registered} of {n.capacity} ({percent}%)\n"
        f"{when}\n"
        "View details in admin dashboard."
    )
    payload: dict[str, object] = {
        "event_id": n.event_id,
        "event_name": n.event_name,
        "registered": n.registered,
        "capacity": n.capacity,
        "starts_at_ms": n.starts_at_ms,
    }
    return text, f"{n.event_id}:{n.registered}", payload


def _custom(
    n: Custom, p: str, templated: bool, bad: list[Violation]
) -> tuple[str, None, dict[str, object]]:
    """The caller's own words: refused when too long rather than cut, since only the
    caller knows what may be left out. With a template the text is not sent, so the
    body may then be empty."""
    title = n.title.strip()
    if len(title) > MAX_FIELD:
        bad.append(Violation(f"{p}title", f"is longer than {MAX_FIELD} characters"))
    elif "\n" in title or "\r" in title:
        bad.append(Violation(f"{p}title", "must be one line"))
    text = f"*{title}*\n\n{n.body}" if title else n.body
    if not templated:
        if not n.body.strip():
            bad.append(Violation(f"{p}body", "is required"))
        elif len(text) > MAX_BODY:
            too_long = f"makes a message of {len(text):,} characters; at most {MAX_BODY:,}"
            bad.append(Violation(f"{p}body", too_long))
    return text, None, {"title": n.title, "body": n.body}


def validate_admin_request(req: AdminRequest) -> Alert:
    """Check a NotifyAdmins request; the alert to send, or ValidationFailed with every
    problem (paths like ``booking.starts_at``).

    The deduplication key is the caller's idempotency_key when given, else the
    notification's natural id (booking_id; product_id with current_stock, so a
    further drop alerts again; event_id with registered). A custom text has no
    natural id: without idempotency_key it is not deduplicated.
    """
    bad: list[Violation] = []
    key = req.idempotency_key
    if len(key) > MAX_KEY:
        bad.append(Violation("idempotency_key", f"is longer than {MAX_KEY} characters"))
    elif key and (not key.isprintable() or key.strip() != key):
        bad.append(Violation("idempotency_key", "must be printable, without surrounding spaces"))
    content_sid = check_template(req.content_sid, req.variables, bad)
    n = req.notification
    rendered: tuple[str, str | None, dict[str, object]] = ("", None, {})
    if isinstance(n, Booking):
        kind, rendered = "booking", _booking(n, "booking.", bad)
    elif isinstance(n, LowStock):
        kind, rendered = "low_stock", _low_stock(n, "low_stock.", bad)
    elif isinstance(n, EventCapacity):
        kind, rendered = "event_capacity", _event(n, "event_capacity.", bad)
    elif isinstance(n, Custom):
        kind, rendered = "custom", _custom(n, "custom.", content_sid is not None, bad)
    else:
        kind = ""
        bad.append(
            Violation("notification", "set one of booking, low_stock, event_capacity, custom")
        )
    if bad:
        raise ValidationFailed(bad)
    text, natural, details = rendered
    dedup = key or natural
    payload: dict[str, object] = {
        "kind": kind,
        kind: details,
        "content_sid": content_sid,
        "variables": dict(sorted(req.variables.items())),
    }
    return Alert(
        kind=kind,
        key=f"admin:{kind}:{dedup}" if dedup else None,
        text=text,
        payload=payload,
        content_sid=content_sid,
        variables=dict(req.variables),
    )


# -- the outcome of storing one message per admin -------------------------------------


def settle(admins: Sequence[str], results: Sequence[Accepted | DomainError]) -> AdminNotified:
    """Turn the store's per-admin results into the answer, or raise.

    - Any IdempotencyConflict: the notification's id was already used with another
      payload (ALREADY_EXISTS). Every admin shares one payload hash, so this is a
      different notification, never a partial retry. (Should an admin have been added
      to the configuration in between, that admin's copy of the new payload was
      stored in the same transaction and is sent: a rare case, accepted rather than
      reading every key before writing.)
    - An admin refused for their own reason (opted out, outside the 24-hour window):
      skipped, the others still get the alert; a notification is worth more to the
      admins who can receive it than none at all. Only when every admin was refused
      is the first refusal raised (FAILED_PRECONDITION), since nothing was sent.
    - ``replayed`` is true only when every delivery is a replay: "nothing new was
      sent". An admin added to the configuration since the first call gets the
      alert now, and the answer says so.
    """
    for result in results:
        if isinstance(result, IdempotencyConflict):
            raise result
    deliveries = tuple(
        AdminDelivery(to=admin, message_id=r.message.id, status=r.message.status)
        for admin, r in zip(admins, results, strict=True)
        if isinstance(r, Accepted)
    )
    replays = [r.replayed for r in results if isinstance(r, Accepted)]
    if not deliveries:
        raise next(r for r in results if isinstance(r, DomainError))
    refused = [r for r in results if isinstance(r, DomainError)]
    if refused:
        # Counts and kinds only: phone numbers stay out of the logs.
        kinds = sorted({getattr(r, "kind", type(r).__name__) for r in refused})
        log.warning(
            "admin notification skipped %d of %d admins: %s",
            len(refused),
            len(results),
            ", ".join(kinds),
        )
    return AdminNotified(deliveries, replayed=all(replays))
