"""NotifyOrder and NotifyAdmins through the real path: a gRPC server on an ephemeral
port, a real SQLite file, the dispatcher and the Twilio emulator over HTTP, so every
admin alert is really sent and its text checked where Twilio would receive it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from notifier.domain.inbound import Consent, InboundMessage
from notifier.emulator import DEV_FROM
from notifier.emulator.server import EmulatorServer
from notifier.storage.repository import Repository
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import count_rows
from tests.support.engine import Engine, engine_settings, start_engine
from tests.support.rpc import details, field_violations

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

ADMIN_1, ADMIN_2 = "+14155550101", "+14155550102"
ADMINS = f"{ADMIN_1},{ADMIN_2}"
TEMPLATE = "HX" + "0123456789abcdef" * 2
STARTS = timestamp_pb2.Timestamp(
    seconds=int(datetime(2026, 11, 21, 13, 30, tzinfo=UTC).timestamp())
)

ORDER_TEXT = (
    "🛒 *New Order Received!*\n\n"
    "Order ID: A-1001\n"
    "Customer: Ana García\n"
    "Email: ana@example.com\n\n"
    "*Items:*\n"
    "• Ceramic mug (x2) - $25.00\n"
    "• Green tea (x3) - $0.30\n\n"
    "*Total: $25.30*\n\n"
    "View details in admin dashboard."
)


def order(**kw: object) -> pb.NotifyOrderRequest:
    request = pb.NotifyOrderRequest(
        order_id="A-1001",
        customer_name="Ana García",
        customer_email="ana@example.com",
        items=[
            pb.OrderItem(title="Ceramic mug", quantity=2, unit_price="12.50"),
            pb.OrderItem(title="Green tea", quantity=3, unit_price="0.10"),
        ],
        total="25.30",
        currency="USD",
    )
    for name, value in kw.items():
        if isinstance(value, dict):
            getattr(request, name).update(value)
        elif isinstance(value, list):
            del getattr(request, name)[:]
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    return request


@pytest.fixture
async def notifier(db_path: Path, emulator: EmulatorServer) -> AsyncIterator[Engine]:
    server, channel = await start_engine(
        engine_settings(db_path, emulator, ADMIN_WHATSAPP_NUMBERS=ADMINS)
    )
    yield Engine(server, channel)
    await channel.close()
    await server.stop(grace=1)


async def until_queued(engine: Engine, deliveries: list[pb.AdminDelivery]) -> None:
    for d in deliveries:
        await engine.until_status(d.message_id, pb.MESSAGE_STATUS_QUEUED)


def bodies_to(emulator: EmulatorServer) -> dict[str, str]:
    return {m.to: m.body for m in emulator.state.accepted}


async def test_order_alert_goes_to_every_admin_with_its_text(
    notifier: Engine, emulator: EmulatorServer
) -> None:
    reply = await notifier.stub.NotifyOrder(order())
    assert not reply.replayed
    assert [d.to for d in reply.deliveries] == [ADMIN_1, ADMIN_2]
    assert {d.status for d in reply.deliveries} == {pb.MESSAGE_STATUS_PENDING}
    assert len({d.message_id for d in reply.deliveries}) == 2
    await until_queued(notifier, list(reply.deliveries))
    assert bodies_to(emulator) == {
        f"whatsapp:{ADMIN_1}": ORDER_TEXT,
        f"whatsapp:{ADMIN_2}": ORDER_TEXT,
    }
    assert {m.from_ for m in emulator.state.accepted} == {DEV_FROM}
    listed = await notifier.stub.ListMessages(
        pb.ListMessagesRequest(filter=pb.MessageFilter(tag="notify:order"))
    )
    assert sorted(m.message_id for m in listed.messages) == sorted(
        d.message_id for d in reply.deliveries
    )


async def test_the_same_order_again_sends_nothing_new(
    notifier: Engine, emulator: EmulatorServer
) -> None:
    first = await notifier.stub.NotifyOrder(order())
    await until_queued(notifier, list(first.deliveries))
    sent = len(emulator.state.requests)
    again = await notifier.stub.NotifyOrder(order(total="25.3"))  # same amount, other spelling
    assert again.replayed
    assert [(d.to, d.message_id) for d in again.deliveries] == [
        (d.to, d.message_id) for d in first.deliveries
    ]
    # A replay answers with where the messages are now.
    assert {d.status for d in again.deliveries} == {pb.MESSAGE_STATUS_QUEUED}
    await asyncio.sleep(0.3)  # room for a wrongly queued duplicate to reach the emulator
    assert len(emulator.state.requests) == sent == 2


async def test_the_same_order_id_with_another_payload_is_already_exists(
    notifier: Engine, emulator: EmulatorServer, db_path: Path
) -> None:
    first = await notifier.stub.NotifyOrder(order())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await notifier.stub.NotifyOrder(order(total="99.00"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "order:A-1001:" in (info.value.details() or "")
    await until_queued(notifier, list(first.deliveries))
    assert count_rows(db_path, "messages") == 2


async def test_no_admins_configured_is_failed_precondition(
    db_path: Path, emulator: EmulatorServer
) -> None:
    server, channel = await start_engine(engine_settings(db_path, emulator))
    try:
        stub: Stub = Engine(server, channel).stub
        for call in (
            stub.NotifyOrder(order()),
            stub.NotifyAdmins(pb.NotifyAdminsRequest(custom=pb.CustomNotification(body="hi"))),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "ADMIN_WHATSAPP_NUMBERS" in (info.value.details() or "")
            (failure,) = [
                d
                for d in details(info.value)
                if isinstance(d, error_details_pb2.PreconditionFailure)
            ]
            assert [(v.type, v.subject) for v in failure.violations] == [
                ("NO_ADMINS", "ADMIN_WHATSAPP_NUMBERS")
            ]
    finally:
        await channel.close()
        await server.stop(grace=1)
    assert count_rows(db_path, "messages") == 0


async def test_a_template_order_sends_the_content_sid_and_variables(
    notifier: Engine, emulator: EmulatorServer
) -> None:
    reply = await notifier.stub.NotifyOrder(
        order(content_sid=TEMPLATE, variables={"1": "A-1001", "2": "$25.30"})
    )
    await until_queued(notifier, list(reply.deliveries))
    assert len(emulator.state.accepted) == 2
    for message in emulator.state.accepted:
        assert message.content_sid == TEMPLATE
        assert json.loads(message.content_variables or "") == {"1": "A-1001", "2": "$25.30"}
    assert all(r.param("Body") is None for r in emulator.state.requests)
    assert {r.param("ContentSid") for r in emulator.state.requests} == {TEMPLATE}


async def test_an_opted_out_admin_is_skipped_and_the_others_still_notified(
    notifier: Engine, emulator: EmulatorServer
) -> None:
    inbound = Repository(notifier.server.db)
    stop = InboundMessage("SM" + "1" * 32, ADMIN_2, DEV_FROM, "whatsapp", "STOP")
    await inbound.record_inbound(stop, Consent.OPT_OUT)
    reply = await notifier.stub.NotifyOrder(order())
    assert [d.to for d in reply.deliveries] == [ADMIN_1]
    await until_queued(notifier, list(reply.deliveries))
    assert list(bodies_to(emulator)) == [f"whatsapp:{ADMIN_1}"]
    stop_1 = InboundMessage("SM" + "2" * 32, ADMIN_1, DEV_FROM, "whatsapp", "STOP")
    await inbound.record_inbound(stop_1, Consent.OPT_OUT)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await notifier.stub.NotifyOrder(order(order_id="A-1002"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "opted out" in (info.value.details() or "")


ADMIN_CASES = [
    pytest.param(
        pb.NotifyAdminsRequest(
            booking=pb.BookingNotification(
                booking_id="B-42",
                customer_name="Luis Pérez",
                customer_email="luis@example.com",
                item="Pottery workshop",
                starts_at=STARTS,
                quantity=2,
                time_zone="Europe/Madrid",
            )
        ),
        "📅 *New Booking!*\n\n"
        "Booking ID: B-42\n"
        "Customer: Luis Pérez\n"
        "Email: luis@example.com\n"
        "What: Pottery workshop\n"
        "When: Sat 21 Nov 2026, 14:30 (Europe/Madrid)\n"
        "Quantity: 2\n\n"
        "View details in admin dashboard.",
        id="booking",
    ),
    pytest.param(
        pb.NotifyAdminsRequest(
            low_stock=pb.LowStockNotification(
                product_id="P-9",
                product_name="Ceramic mug",
                sku="MUG-BLU-01",
                current_stock=3,
                threshold=5,
            )
        ),
        "⚠️ *Low Stock Alert*\n\n"
        "Product: Ceramic mug\n"
        "SKU: MUG-BLU-01\n"
        "In stock: 3\n"
        "Threshold: 5\n\n"
        "Restock soon to keep it available.",
        id="low_stock",
    ),
    pytest.param(
        pb.NotifyAdminsRequest(
            event_capacity=pb.EventCapacityNotification(
                event_id="E-3",
                event_name="Spring gala",
                registered=45,
                capacity=60,
                starts_at=STARTS,
            )
        ),
        "🎟️ *Event Filling Up*\n\n"
        "Event: Spring gala\n"
        "Registered: 45 of 60 (75%)\n"
        "Starts: Sat 21 Nov 2026, 13:30 (UTC)\n\n"
        "View details in admin dashboard.",
        id="event_capacity",
    ),
    pytest.param(
        pb.NotifyAdminsRequest(
            custom=pb.CustomNotification(
                title="Maintenance tonight", body="The shop is closed 22:00-23:00."
            ),
            idempotency_key="maintenance-2026-11-21",
        ),
        "*Maintenance tonight*\n\nThe shop is closed 22:00-23:00.",
        id="custom",
    ),
]


@pytest.mark.parametrize(("request_", "text"), ADMIN_CASES)
async def test_admin_notifications_are_sent_with_their_texts(
    notifier: Engine, emulator: EmulatorServer, request_: pb.NotifyAdminsRequest, text: str
) -> None:
    reply = await notifier.stub.NotifyAdmins(request_)
    assert not reply.replayed
    assert [d.to for d in reply.deliveries] == [ADMIN_1, ADMIN_2]
    await until_queued(notifier, list(reply.deliveries))
    assert bodies_to(emulator) == {f"whatsapp:{ADMIN_1}": text, f"whatsapp:{ADMIN_2}": text}
    again = await notifier.stub.NotifyAdmins(request_)
    assert again.replayed
    assert [d.message_id for d in again.deliveries] == [d.message_id for d in reply.deliveries]
    assert len(emulator.state.requests) == 2


async def test_a_custom_text_without_a_key_is_not_deduplicated(
    notifier: Engine, emulator: EmulatorServer
) -> None:
    request = pb.NotifyAdminsRequest(custom=pb.CustomNotification(body="Backup done."))
    first = await notifier.stub.NotifyAdmins(request)
    second = await notifier.stub.NotifyAdmins(request)
    assert not second.replayed
    assert {d.message_id for d in first.deliveries}.isdisjoint(
        d.message_id for d in second.deliveries
    )
    await until_queued(notifier, [*first.deliveries, *second.deliveries])
    assert [m.body for m in emulator.state.accepted] == ["Backup done."] * 4


async def test_a_new_stock_level_is_a_new_alert_and_a_reused_key_a_conflict(
    notifier: Engine,
) -> None:
    def low(stock: int, key: str = "") -> pb.NotifyAdminsRequest:
        return pb.NotifyAdminsRequest(
            low_stock=pb.LowStockNotification(
                product_id="P-9", product_name="Mug", current_stock=stock, threshold=5
            ),
            idempotency_key=key,
        )

    three = await notifier.stub.NotifyAdmins(low(3))
    two = await notifier.stub.NotifyAdmins(low(2))
    assert not two.replayed
    assert {d.message_id for d in three.deliveries}.isdisjoint(d.message_id for d in two.deliveries)
    await notifier.stub.NotifyAdmins(low(1, key="restock-P-9"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await notifier.stub.NotifyAdmins(low(0, key="restock-P-9"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_invalid_input_is_invalid_argument_with_every_field(
    notifier: Engine, db_path: Path
) -> None:
    bad_order = order(
        order_id="",
        currency="JPY",
        items=[
            pb.OrderItem(title="Matcha", quantity=0, unit_price="1250.50"),
            pb.OrderItem(title="", quantity=1, unit_price="-1"),
        ],
        total="1250",
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await notifier.stub.NotifyOrder(bad_order)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(info.value) == {
        "order_id": "is required",
        "items[0].quantity": "must be at least 1",
        "items[0].unit_price": "has 2 decimal(s); JPY allows 0",
        "items[1].title": "is required",
        "items[1].unit_price": "must not be negative",
    }
    bad_booking = pb.NotifyAdminsRequest(
        booking=pb.BookingNotification(booking_id="B-1", time_zone="Nowhere/City"),
        content_sid="HX12",
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await notifier.stub.NotifyAdmins(bad_booking)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(info.value) == {
        "content_sid": "must be a Content SID: HX followed by 32 hex digits",
        "booking.customer_name": "is required",
        "booking.customer_email": "is required",
        "booking.item": "is required",
        "booking.starts_at": "is required",
        "booking.quantity": "must be at least 1",
        "booking.time_zone": "is not an IANA time zone, e.g. Europe/Madrid",
    }
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await notifier.stub.NotifyAdmins(pb.NotifyAdminsRequest())
    assert field_violations(info.value) == {
        "notification": "set one of booking, low_stock, event_capacity, custom"
    }
    assert count_rows(db_path, "messages") == 0
