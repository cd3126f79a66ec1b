"""Template pre-flight by the local rules (the default, NOTIFIER_TEMPLATE_CHECK=local)
through a real gRPC server, on SQLite and PostgreSQL: variables that break Meta's
parameter rules are refused before anything is stored, every problem named at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from google.rpc import error_details_pb2

from notifier.config import Settings, load_settings
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb, count_rows
from tests.support.rpc import details

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

pytestmark = pytest.mark.backends("sqlite", "postgresql")

SID = "HX" + "0123456789abcdef" * 2
TO = "whatsapp:+14155550100"
# Each value breaks one of Meta's rules; "4" is missing between "3" and "5".
BROKEN = {
    "1": "Ana",
    "2": "line one\nline two",
    "3": "",
    "5": "wide     gap",
    "6": "x" * 1601,
}
EXPECTED = [
    ('variables["2"]', "must not contain newlines or tabs (Meta's template parameter rules)"),
    ('variables["3"]', "must not be empty (Meta refuses empty template parameters)"),
    ('variables["5"]', "must not have more than 4 spaces in a row"),
    ('variables["6"]', "has 1,601 characters; at most 1,600"),
    ('variables["4"]', 'is missing: keys run from "1" to "6" without gaps'),
]


@pytest.fixture
def settings(database: TestDb) -> Settings:
    return load_settings(
        NOTIFIER_DATABASE_URL=database.url,
        NOTIFIER_GRPC_ADDR="127.0.0.1:0",
        ADMIN_WHATSAPP_NUMBERS="+14155550101",
    )


def violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    (bad,) = [d for d in details(err) if isinstance(d, error_details_pb2.BadRequest)]
    return [(v.field, v.description) for v in bad.field_violations]


async def test_send_message_names_every_broken_variable_and_stores_nothing(
    stub: Stub, database: TestDb
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendMessage(pb.SendMessageRequest(to=TO, content_sid=SID, variables=BROKEN))
    assert violations(info.value) == EXPECTED
    assert "Traceback" not in (info.value.details() or "")
    assert count_rows(database, "messages") == 0


async def test_variables_within_the_rules_are_accepted(stub: Stub, database: TestDb) -> None:
    good = {"1": "Ana García", "2": "4 spaces:    fine", "3": "x" * 1600}
    sent = await stub.SendMessage(pb.SendMessageRequest(to=TO, content_sid=SID, variables=good))
    got = await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=sent.message_id))
    assert got.message.status == pb.MESSAGE_STATUS_PENDING
    assert count_rows(database, "messages") == 1


async def test_bulk_items_are_refused_one_by_one(stub: Stub, database: TestDb) -> None:
    """Shared variables and an item's own are checked together, per item; the good
    items are stored and the stream goes on."""
    request = pb.SendBulkRequest(
        defaults=pb.BulkContent(content_sid=SID, variables={"1": "Shop"}),
        items=[
            pb.BulkItem(correlation_id="ok", to="+14155550100", variables={"2": "Ana"}),
            pb.BulkItem(correlation_id="gap", to="+14155550101", variables={"3": "Bea"}),
            pb.BulkItem(correlation_id="tab", to="+14155550102", variables={"2": "a\tb"}),
            pb.BulkItem(correlation_id="ok2", to="+14155550103", variables={"2": "Cy"}),
        ],
    )
    results = {
        r.correlation_id: r async for reply in stub.SendBulk(iter([request])) for r in reply.results
    }
    assert {cid for cid, r in results.items() if r.WhichOneof("result") == "accepted"} == {
        "ok",
        "ok2",
    }
    gap, tab = results["gap"].error, results["tab"].error
    assert gap.code == tab.code == "INVALID_ARGUMENT"
    assert [(v.field, v.description) for v in gap.violations] == [
        ('variables["2"]', 'is missing: keys run from "1" to "3" without gaps')
    ]
    assert [(v.field, v.description) for v in tab.violations] == [
        ('variables["2"]', "must not contain newlines or tabs (Meta's template parameter rules)")
    ]
    assert count_rows(database, "messages") == 2


async def test_admin_notifications_with_a_template_follow_the_same_rules(
    stub: Stub, database: TestDb
) -> None:
    order = pb.NotifyOrderRequest(
        order_id="A-1",
        customer_name="Ana",
        customer_email="ana@example.com",
        items=[pb.OrderItem(title="Mug", quantity=1, unit_price="12.50")],
        total="12.50",
        currency="USD",
        content_sid=SID,
        variables=BROKEN,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.NotifyOrder(order)
    assert violations(info.value) == EXPECTED
    custom = pb.NotifyAdminsRequest(
        custom=pb.CustomNotification(title="Note", body="see template"),
        content_sid=SID,
        variables={"2": "b"},
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.NotifyAdmins(custom)
    assert violations(info.value) == [
        ('variables["1"]', 'is missing: keys run from "1" to "2" without gaps')
    ]
    assert count_rows(database, "messages") == 0
