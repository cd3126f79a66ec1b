"""Admin notification texts word for word, exact money, and validation of every kind.

Pure domain tests: the texts admins read are part of the product, so each is checked as
a whole string, not by fragments.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from notifier.domain.errors import (
    DomainError,
    IdempotencyConflict,
    PreconditionFailed,
    ValidationFailed,
)
from notifier.domain.model import Accepted, Channel, MessageRecord, Status
from notifier.domain.money import format_money, line_total
from notifier.domain.notifications import (
    AdminDelivery,
    AdminRequest,
    Booking,
    Custom,
    EventCapacity,
    LowStock,
    OrderItem,
    OrderRequest,
    fill_percent,
    order_text,
    settle,
    validate_admin_request,
    validate_order,
)
from notifier.domain.service import payload_hash

ADMIN = "+14155550101"
TEMPLATE = "HX" + "0123456789abcdef" * 2
# Sat 21 Nov 2026, 13:30 UTC (14:30 in Madrid, CET)
STARTS_MS = int(datetime(2026, 11, 21, 13, 30, tzinfo=UTC).timestamp()) * 1000


def order(**kw: object) -> OrderRequest:
    values: dict[str, object] = {
        "order_id": "A-1001",
        "customer_name": "Ana García",
        "customer_email": "ana@example.com",
        "items": [OrderItem("Ceramic mug", 2, "12.50"), OrderItem("Green tea", 3, "0.10")],
        "total": "25.30",
        "currency": "USD",
    }
    values.update(kw)
    return OrderRequest(**values)  # type: ignore[arg-type]


def violations(exc: pytest.ExceptionInfo[ValidationFailed]) -> dict[str, str]:
    return {v.field: v.description for v in exc.value.violations}


# -- orders -----------------------------------------------------------------------------


def test_order_alert_in_usd_reads_like_the_seed() -> None:
    alert = validate_order(order())
    assert alert.text == (
        "🛒 *New Order Received!*\n"
        "\n"
        "Order ID: A-1001\n"
        "Customer: Ana García\n"
        "Email: ana@example.com\n"
        "\n"
        "*Items:*\n"
        "• Ceramic mug (x2) - $25.00\n"
        "• Green tea (x3) - $0.30\n"
        "\n"
        "*Total: $25.30*\n"
        "\n"
        "View details in admin dashboard."
    )
    assert alert.key == "order:A-1001"
    assert alert.idempotency_key(ADMIN) == "order:A-1001:+14155550101"


def test_order_alert_in_yen_has_no_decimals_and_groups_thousands() -> None:
    alert = validate_order(
        order(
            order_id="JP-7",
            items=[OrderItem("Matcha set", 1, "1250"), OrderItem("Chopsticks", 4, "300")],
            total="2450",
            currency="JPY",
        )
    )
    assert alert.text == (
        "🛒 *New Order Received!*\n\n"
        "Order ID: JP-7\n"
        "Customer: Ana García\n"
        "Email: ana@example.com\n\n"
        "*Items:*\n"
        "• Matcha set (x1) - ¥1,250\n"
        "• Chopsticks (x4) - ¥1,200\n\n"
        "*Total: ¥2,450*\n\n"
        "View details in admin dashboard."
    )


def test_order_alert_in_euro_and_kuwaiti_dinar() -> None:
    eur = validate_order(
        order(items=[OrderItem("Espresso cups", 1, "1234.5")], total="1239.5", currency="EUR")
    )
    assert "• Espresso cups (x1) - €1,234.50\n\n*Total: €1,239.50*\n" in eur.text
    assert eur.text.startswith("🛒 *New Order Received!*\n\nOrder ID: A-1001\n")
    kwd = validate_order(
        order(items=[OrderItem("Dates", 2, "1.125")], total="2.250", currency="KWD")
    )
    assert "• Dates (x2) - KWD2.250\n\n*Total: KWD2.250*\n" in kwd.text


def test_money_is_exact_decimal_never_float() -> None:
    assert line_total(Decimal("0.10"), 3) == Decimal("0.30")
    assert str(line_total(Decimal("0.10"), 3)) == "0.30"
    assert 0.10 * 3 != 0.30  # what a float would have done
    huge = line_total(Decimal("99999999999999999999999.99"), 9_223_372_036_854_775_807)
    # Checked against integer arithmetic in cents: no digit lost at 44 digits.
    cents = 9_999_999_999_999_999_999_999_999 * 9_223_372_036_854_775_807
    assert huge == Decimal(f"{cents}E-2")
    assert huge.as_tuple().exponent == -2
    assert format_money(Decimal("0.30"), "USD") == "$0.30"
    assert format_money(Decimal("1250"), "JPY") == "¥1,250"
    assert format_money(Decimal("12.5"), "EUR") == "€12.50"


def test_equal_amounts_spelled_differently_are_the_same_order() -> None:
    a = validate_order(order(items=[OrderItem("Mug", 1, "12.5")], total="12.5"))
    b = validate_order(order(items=[OrderItem("Mug", 1, "12.50")], total="12.50"))
    c = validate_order(order(items=[OrderItem("Mug", 1, "12.50")], total="13.50"))
    assert payload_hash(a.payload) == payload_hash(b.payload)
    assert payload_hash(a.payload) != payload_hash(c.payload)


def test_long_order_is_shortened_to_whatsapps_limit() -> None:
    items = [OrderItem(f"Handmade ceramic bowl, glaze no. {i:03}", 1, "19.99") for i in range(120)]
    alert = validate_order(order(items=items, total="2398.80"))
    text = alert.text
    assert len(text) <= 1600
    head, rest = text.split("*Items:*\n")
    assert head == (
        "🛒 *New Order Received!*\n\n"
        "Order ID: A-1001\nCustomer: Ana García\nEmail: ana@example.com\n\n"
    )
    listed, tail = rest.split("\n\n", 1)
    assert tail == "*Total: $2,398.80*\n\nView details in admin dashboard."
    lines = listed.split("\n")
    shown = lines[:-1]
    assert shown == [
        f"• Handmade ceramic bowl, glaze no. {i:03} (x1) - $19.99" for i in range(len(shown))
    ]
    assert lines[-1] == f"… and {120 - len(shown)} more items"
    # As many lines as fit: one more would break the limit.
    one_more = f"• Handmade ceramic bowl, glaze no. {len(shown):03} (x1) - $19.99\n"
    assert len(text) + len(one_more) > 1600  # "… and 93" -> "… and 92": same length


def test_one_item_left_out_says_item_in_the_singular() -> None:
    lines = ["• Mug (x1) - $12.50", "• Teapot with bamboo handle (x1) - $45.00"]
    full = order_text("A-1", "Ana", "ana@example.com", lines, "$57.50", limit=10_000)
    short = order_text("A-1", "Ana", "ana@example.com", lines, "$57.50", limit=len(full) - 1)
    assert short == (
        "🛒 *New Order Received!*\n\n"
        "Order ID: A-1\nCustomer: Ana\nEmail: ana@example.com\n\n"
        "*Items:*\n"
        "• Mug (x1) - $12.50\n"
        "… and 1 more item\n\n"
        "*Total: $57.50*\n\n"
        "View details in admin dashboard."
    )
    assert len(short) < len(full)


def test_absurdly_long_fields_are_cut_so_the_header_always_fits() -> None:
    name = "Ana " + "x" * 5_000
    items = [OrderItem("Mug " * 1_000, 1, "1.00") for _ in range(3)]
    alert = validate_order(order(customer_name=name, items=items, total="3.00"))
    assert len(alert.text) <= 1600
    customer = next(line for line in alert.text.split("\n") if line.startswith("Customer: "))
    assert customer == "Customer: Ana " + "x" * 195 + "…"
    assert len(customer) == len("Customer: ") + 200
    assert "*Total: $3.00*" in alert.text
    assert alert.text.count("• Mug Mug") + int("… and" in alert.text) >= 1


def test_every_order_violation_is_reported_at_once() -> None:
    with pytest.raises(ValidationFailed) as exc:
        validate_order(
            OrderRequest(
                order_id="",
                customer_name=" ",
                customer_email="not-an-email",
                items=[
                    OrderItem("", 0, "1.00"),
                    OrderItem("Mug", 1, "-3.00"),
                    OrderItem("Mug", 1, "1e3"),
                    OrderItem("Mug", 1, ""),
                ],
                total="12,50",
                currency="usd",
                content_sid="HX123",
                variables={"bad key": "x"},
            )
        )
    assert violations(exc) == {
        "order_id": "is required",
        "customer_name": "is required",
        "customer_email": "is not an email address, e.g. ana@example.com",
        "currency": "is not an ISO 4217 currency code, e.g. USD, EUR, JPY",
        "items[0].title": "is required",
        "items[0].quantity": "must be at least 1",
        "items[1].unit_price": "must not be negative",
        "items[2].unit_price": "must be a decimal number like 12.50 (digits and one point only)",
        "items[3].unit_price": "is required: an exact decimal string, e.g. 12.50",
        "total": "must be a decimal number like 12.50 (digits and one point only)",
        "content_sid": "must be a Content SID: HX followed by 32 hex digits",
        'variables["bad key"]': 'keys are placeholder numbers "1", "2"… without gaps',
    }
    with pytest.raises(ValidationFailed) as exc:
        validate_order(order(items=[], currency="XYZ", variables={"1": "x"}))
    assert violations(exc) == {
        "items": "at least one item is required",
        "currency": "is not an ISO 4217 currency code, e.g. USD, EUR, JPY",
        "variables": "only with content_sid",
    }


def test_amounts_with_more_decimals_than_the_currency_are_refused() -> None:
    with pytest.raises(ValidationFailed) as exc:
        validate_order(
            order(
                items=[OrderItem("Matcha", 1, "1250.50"), OrderItem("Tea", 1, "300")],
                total="1550.5",
                currency="JPY",
            )
        )
    assert violations(exc) == {
        "items[0].unit_price": "has 2 decimal(s); JPY allows 0",
        "total": "has 1 decimal(s); JPY allows 0",
    }
    with pytest.raises(ValidationFailed) as exc:
        validate_order(order(items=[OrderItem("Mug", 1, "12.505")], total="12.50"))
    assert violations(exc) == {"items[0].unit_price": "has 3 decimal(s); USD allows 2"}
    validate_order(order(items=[OrderItem("Dates", 1, "1.125")], total="1.125", currency="KWD"))


def test_order_template_replaces_the_text() -> None:
    alert = validate_order(order(content_sid=TEMPLATE, variables={"1": "A-1001", "2": "$25.30"}))
    message = alert.message_to(ADMIN)
    assert (message.to, message.channel, message.body) == (ADMIN, Channel.WHATSAPP, None)
    assert (message.content_sid, message.variables) == (TEMPLATE, {"1": "A-1001", "2": "$25.30"})
    assert message.idempotency_key == "order:A-1001:+14155550101"
    assert message.tags == ("admin-notification", "notify:order")
    text_message = validate_order(order()).message_to(ADMIN)
    assert (text_message.content_sid, text_message.body) == (None, validate_order(order()).text)


# -- the other notifications --------------------------------------------------------------


def booking(**kw: object) -> Booking:
    values: dict[str, object] = {
        "booking_id": "B-42",
        "customer_name": "Luis Pérez",
        "customer_email": "luis@example.com",
        "item": "Pottery workshop",
        "starts_at_ms": STARTS_MS,
        "quantity": 2,
        "time_zone": "Europe/Madrid",
    }
    values.update(kw)
    return Booking(**values)  # type: ignore[arg-type]


def test_booking_text_shows_the_time_in_the_given_zone() -> None:
    alert = validate_admin_request(AdminRequest(booking()))
    assert alert.text == (
        "📅 *New Booking!*\n\n"
        "Booking ID: B-42\n"
        "Customer: Luis Pérez\n"
        "Email: luis@example.com\n"
        "What: Pottery workshop\n"
        "When: Sat 21 Nov 2026, 14:30 (Europe/Madrid)\n"
        "Quantity: 2\n\n"
        "View details in admin dashboard."
    )
    assert alert.key == "admin:booking:B-42"
    utc = validate_admin_request(AdminRequest(booking(time_zone="")))
    assert "When: Sat 21 Nov 2026, 13:30 (UTC)\n" in utc.text


def test_booking_violations_all_at_once() -> None:
    with pytest.raises(ValidationFailed) as exc:
        validate_admin_request(
            AdminRequest(
                booking(
                    booking_id="",
                    customer_email="",
                    item="",
                    starts_at_ms=None,
                    quantity=0,
                    time_zone="Mars/Olympus_Mons",
                )
            )
        )
    assert violations(exc) == {
        "booking.booking_id": "is required",
        "booking.customer_email": "is required",
        "booking.item": "is required",
        "booking.starts_at": "is required",
        "booking.quantity": "must be at least 1",
        "booking.time_zone": "is not an IANA time zone, e.g. Europe/Madrid",
    }
    with pytest.raises(ValidationFailed) as exc:
        validate_admin_request(AdminRequest(booking(starts_at_ms=10**20, time_zone="../etc")))
    assert violations(exc) == {
        "booking.starts_at": "is out of range",
        "booking.time_zone": "is not an IANA time zone, e.g. Europe/Madrid",
    }


def test_low_stock_text_and_natural_key() -> None:
    alert = validate_admin_request(AdminRequest(LowStock("P-9", "Ceramic mug", "MUG-BLU-01", 3, 5)))
    assert alert.text == (
        "⚠️ *Low Stock Alert*\n\n"
        "Product: Ceramic mug\n"
        "SKU: MUG-BLU-01\n"
        "In stock: 3\n"
        "Threshold: 5\n\n"
        "Restock soon to keep it available."
    )
    # A further drop is a new alert; the same stock level again is a retry.
    assert alert.key == "admin:low_stock:P-9:3"
    no_sku = validate_admin_request(AdminRequest(LowStock("P-9", "Mug", "", -2, 0)))
    assert no_sku.text == (
        "⚠️ *Low Stock Alert*\n\nProduct: Mug\nIn stock: -2\nThreshold: 0\n\n"
        "Restock soon to keep it available."
    )
    with pytest.raises(ValidationFailed) as exc:
        validate_admin_request(AdminRequest(LowStock("", "", "", 1, -1)))
    assert violations(exc) == {
        "low_stock.product_id": "is required",
        "low_stock.product_name": "is required",
        "low_stock.threshold": "must not be negative",
    }
    with pytest.raises(ValidationFailed) as exc:
        validate_admin_request(AdminRequest(LowStock("P-9", "Mug", "", 8, 5)))
    assert violations(exc) == {"low_stock.current_stock": "is above the threshold (5): not low"}


def test_event_capacity_text_with_a_half_up_percentage() -> None:
    alert = validate_admin_request(
        AdminRequest(EventCapacity("E-3", "Spring gala", 45, 60, STARTS_MS))
    )
    assert alert.text == (
        "🎟️ *Event Filling Up*\n\n"
        "Event: Spring gala\n"
        "Registered: 45 of 60 (75%)\n"
        "Starts: Sat 21 Nov 2026, 13:30 (UTC)\n\n"
        "View details in admin dashboard."
    )
    assert alert.key == "admin:event_capacity:E-3:45"
    no_start = validate_admin_request(AdminRequest(EventCapacity("E-3", "Gala", 1, 8)))
    assert no_start.text == (
        "🎟️ *Event Filling Up*\n\nEvent: Gala\nRegistered: 1 of 8 (13%)\n\n"
        "View details in admin dashboard."
    )
    # Half up, not to even: 12.5 -> 13, 0.5 -> 1, 62.5 -> 63; 66.67 -> 67; 110 overbooked.
    assert [fill_percent(r, c) for r, c in [(1, 8), (1, 200), (5, 8), (2, 3), (11, 10)]] == [
        Decimal(13),
        Decimal(1),
        Decimal(63),
        Decimal(67),
        Decimal(110),
    ]
    with pytest.raises(ValidationFailed) as exc:
        validate_admin_request(AdminRequest(EventCapacity("E-3", "", -1, 0)))
    assert violations(exc) == {
        "event_capacity.event_name": "is required",
        "event_capacity.registered": "must not be negative",
        "event_capacity.capacity": "must be at least 1",
    }


def test_custom_text_with_and_without_title() -> None:
    titled = validate_admin_request(
        AdminRequest(Custom("Maintenance tonight", "The shop is closed 22:00-23:00."))
    )
    assert titled.text == "*Maintenance tonight*\n\nThe shop is closed 22:00-23:00."
    assert titled.key is None  # no natural id: no deduplication without a key
    assert titled.message_to(ADMIN).idempotency_key is None
    plain = validate_admin_request(AdminRequest(Custom("", "Backup done."), idempotency_key="b-1"))
    assert plain.text == "Backup done."
    assert plain.key == "admin:custom:b-1"
    assert plain.idempotency_key(ADMIN) == "admin:custom:b-1:+14155550101"
    with pytest.raises(ValidationFailed) as exc:
        validate_admin_request(AdminRequest(Custom("Title", "x" * 1_600)))
    assert violations(exc) == {
        "custom.body": "makes a message of 1,609 characters; at most 1,600",
    }


def test_explicit_key_replaces_the_natural_id() -> None:
    alert = validate_admin_request(AdminRequest(booking(), idempotency_key="evt-77"))
    assert alert.key == "admin:booking:evt-77"


def test_admin_request_violations_at_the_top_level() -> None:
    with pytest.raises(ValidationFailed) as exc:
        validate_admin_request(
            AdminRequest(None, idempotency_key=" k", content_sid="HXnope", variables={"1": "a"})
        )
    assert violations(exc) == {
        "idempotency_key": "must be printable, without surrounding spaces",
        "content_sid": "must be a Content SID: HX followed by 32 hex digits",
        "notification": "set one of booking, low_stock, event_capacity, custom",
    }
    with pytest.raises(ValidationFailed) as exc:
        validate_admin_request(AdminRequest(Custom("", ""), variables={"1": "a"}))
    assert violations(exc) == {
        "variables": "only with content_sid",
        "custom.body": "is required",
    }
    templated = validate_admin_request(
        AdminRequest(Custom("", ""), idempotency_key="t-1", content_sid=TEMPLATE)
    )
    assert templated.message_to(ADMIN).content_sid == TEMPLATE


# -- partial outcomes -------------------------------------------------------------------


def _accepted(mid: str, to: str, replayed: bool = False) -> Accepted:
    record = MessageRecord(
        id=mid, to=to, channel=Channel.WHATSAPP, status=Status.PENDING, created_at_ms=1,
        updated_at_ms=1,
    )  # fmt: skip
    return Accepted(record, replayed)


def test_opted_out_admins_are_skipped_unless_every_admin_is() -> None:
    admins = ["+14155550101", "+14155550102", "+14155550103"]
    opted_out = PreconditionFailed(admins[1], "OPTED_OUT", "opted out")
    notified = settle(
        admins, [_accepted("M1", admins[0]), opted_out, _accepted("M3", admins[2], True)]
    )
    assert notified.deliveries == (
        AdminDelivery(admins[0], "M1", Status.PENDING),
        AdminDelivery(admins[2], "M3", Status.PENDING),
    )
    assert notified.replayed is False
    assert settle(admins[:1], [_accepted("M1", admins[0], True)]).replayed is True
    refusals: list[Accepted | DomainError] = [opted_out, PreconditionFailed("x", "OPTED_OUT", "")]
    with pytest.raises(PreconditionFailed) as exc:
        settle(admins[:2], refusals)
    assert exc.value is opted_out


def test_a_reused_id_with_another_payload_is_a_conflict_even_if_some_admin_is_new() -> None:
    conflict = IdempotencyConflict("order:A-1:+14155550101", "M0")
    with pytest.raises(IdempotencyConflict):
        settle(["+14155550101", "+14155550102"], [conflict, _accepted("M2", "+14155550102")])
