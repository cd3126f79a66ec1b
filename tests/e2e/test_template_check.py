"""NOTIFIER_TEMPLATE_CHECK=twilio through the real path: the server fetches templates
from the emulator's Content API over HTTP (GET /v1/Content/{Sid}), checks the variables
against their placeholders, caches them, and goes on by the local rules when the Content
API is down, counting that in /metrics. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2

from notifier.emulator.content import APPOINTMENT, ORDER_CONFIRMED, WELCOME
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb, count_rows
from tests.support.engine import Engine
from tests.support.metrics import metrics_url, scrape, value
from tests.support.rpc import details

pytestmark = pytest.mark.backends("sqlite", "postgresql")

TO = "+14155550100"
UNKNOWN = "HX" + "f0" * 16


@pytest.fixture
def engine_env(emulator: EmulatorServer, request: pytest.FixtureRequest) -> dict[str, Any]:
    env: dict[str, Any] = {
        "NOTIFIER_TEMPLATE_CHECK": "twilio",
        "NOTIFIER_CONTENT_API_BASE_URL": emulator.url,
        "NOTIFIER_TEMPLATE_CACHE_TTL": "1h",
        "NOTIFIER_METRICS_ADDR": "127.0.0.1:0",
    }
    env.update(getattr(request, "param", {}))
    return env


def violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    (bad,) = [d for d in details(err) if isinstance(d, error_details_pb2.BadRequest)]
    return [(v.field, v.description) for v in bad.field_violations]


async def refused(engine: Engine, content_sid: str, variables: dict[str, str]) -> list[Any]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await engine.send(body=None, content_sid=content_sid, variables=variables)
    return violations(info.value)


async def content_api(emulator: EmulatorServer, outage: int | None = None) -> dict[str, Any]:
    """What the emulator's Content API saw (and, with ``outage``, start an outage)."""
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        if outage is not None:
            reply = await client.post("/_emulator/content", json={"outage": outage})
        else:
            reply = await client.get("/_emulator/content")
    reply.raise_for_status()
    answer: dict[str, Any] = reply.json()
    return answer


async def test_variables_that_fill_the_template_are_sent(
    engine: Engine, emulator: EmulatorServer
) -> None:
    sends = {
        ORDER_CONFIRMED: {"1": "Ana", "2": "A-1001"},
        APPOINTMENT: {"1": "Dr. Ruiz", "2": "Mon 10:00", "3": "b-42"},  # {{3}} is in a URL
        WELCOME: {},
    }
    for sid, variables in sends.items():
        mid = await engine.send(body=None, content_sid=sid, variables=variables)
        await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    assert {m.content_sid for m in emulator.state.accepted} == set(sends)


async def test_wrong_variables_are_refused_naming_each_field(
    engine: Engine, emulator: EmulatorServer, database: TestDb
) -> None:
    assert await refused(engine, APPOINTMENT, {"1": "Dr. Ruiz", "2": "Mon"}) == [
        ('variables["3"]', "is missing: the template uses {{3}}")
    ]
    assert await refused(engine, ORDER_CONFIRMED, {"1": "Ana", "2": "A-1", "3": "extra"}) == [
        ('variables["3"]', "the template has no {{3}}")
    ]
    assert await refused(engine, WELCOME, {"1": "Ana"}) == [
        ('variables["1"]', "the template has no {{1}}")
    ]
    # The local rules and the template together, a variable named once.
    assert await refused(engine, ORDER_CONFIRMED, {"1": "", "3": "x"}) == [
        ('variables["1"]', "must not be empty (Meta refuses empty template parameters)"),
        ('variables["2"]', 'is missing: keys run from "1" to "3" without gaps'),
        ('variables["3"]', "the template has no {{3}}"),
    ]
    assert count_rows(database, "messages") == 0
    assert emulator.state.accepted == []


async def test_an_unknown_template_is_refused_on_content_sid(
    engine: Engine, database: TestDb
) -> None:
    assert await refused(engine, UNKNOWN, {"1": "Ana"}) == [
        ("content_sid", "no such template in the Twilio account")
    ]
    request = pb.SendBulkRequest(
        items=[
            pb.BulkItem(correlation_id="unknown", to=TO, content_sid=UNKNOWN),
            pb.BulkItem(
                correlation_id="short",
                to=TO,
                content_sid=ORDER_CONFIRMED,
                variables={"1": "Ana"},
            ),
            pb.BulkItem(correlation_id="ok", to=TO, content_sid=WELCOME),
        ]
    )
    results = {
        r.correlation_id: r
        async for reply in engine.stub.SendBulk(iter([request]))
        for r in reply.results
    }
    assert [(v.field, v.description) for v in results["unknown"].error.violations] == [
        ("content_sid", "no such template in the Twilio account")
    ]
    assert [(v.field, v.description) for v in results["short"].error.violations] == [
        ('variables["2"]', "is missing: the template uses {{2}}")
    ]
    assert results["ok"].WhichOneof("result") == "accepted"
    assert count_rows(database, "messages") == 1


async def test_a_template_is_fetched_once_per_ttl(engine: Engine, emulator: EmulatorServer) -> None:
    for name in ("Ana", "Bea", "Cy"):
        await engine.send(body=None, content_sid=ORDER_CONFIRMED, variables={"1": name, "2": "A"})
    await refused(engine, ORDER_CONFIRMED, {"1": "Dee"})  # checked against the cached copy
    request = pb.SendBulkRequest(
        defaults=pb.BulkContent(content_sid=ORDER_CONFIRMED, variables={"2": "A-7"}),
        items=[
            pb.BulkItem(correlation_id=str(i), to=TO, variables={"1": f"n{i}"}) for i in range(5)
        ],
    )
    async for reply in engine.stub.SendBulk(iter([request])):
        assert all(r.WhichOneof("result") == "accepted" for r in reply.results)
    assert (await content_api(emulator))["fetches"] == {ORDER_CONFIRMED: 1}
    samples = await scrape(metrics_url(engine.server))
    assert value(samples, "notifier_content_api_requests_total", outcome="found") == 1


@pytest.mark.parametrize("engine_env", [{"NOTIFIER_TEMPLATE_CACHE_TTL": "1ms"}], indirect=True)
async def test_an_expired_template_is_fetched_again(
    engine: Engine, emulator: EmulatorServer
) -> None:
    """Two calls are more than a millisecond apart (each is a network round trip and a
    commit), so each finds the cached copy expired."""
    for name in ("Ana", "Bea"):
        await engine.send(body=None, content_sid=ORDER_CONFIRMED, variables={"1": name, "2": "A"})
    assert (await content_api(emulator))["fetches"] == {ORDER_CONFIRMED: 2}


@pytest.mark.parametrize("outage", [503, 500, 401])
async def test_when_the_content_api_fails_sends_go_on_by_the_local_rules(
    engine: Engine, emulator: EmulatorServer, database: TestDb, outage: int
) -> None:
    await content_api(emulator, outage=outage)
    # {{2}} is missing, which only the template would show: accepted.
    mid = await engine.send(body=None, content_sid=ORDER_CONFIRMED, variables={"1": "Ana"})
    await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    # An unknown template cannot be told apart either: accepted.
    await engine.send(body=None, content_sid=UNKNOWN, variables={"1": "Ana"})
    # The local rules still refuse what Meta would.
    assert await refused(engine, ORDER_CONFIRMED, {"1": "two\nlines"}) == [
        ('variables["1"]', "must not contain newlines or tabs (Meta's template parameter rules)")
    ]
    assert count_rows(database, "messages") == 2
    samples = await scrape(metrics_url(engine.server))
    # One request found the outage; the sends after it did not wait for another.
    assert value(samples, "notifier_content_api_requests_total", outcome="unavailable") == 1
    assert (await content_api(emulator))["fetches"] == {ORDER_CONFIRMED: 1}
    assert value(samples, "notifier_template_check_fallbacks_total") == 3


@pytest.mark.parametrize(
    "engine_env", [{"NOTIFIER_CONTENT_API_BASE_URL": "http://127.0.0.1:9"}], indirect=True
)
async def test_an_unreachable_content_api_falls_back_to_the_local_rules(engine: Engine) -> None:
    mid = await engine.send(body=None, content_sid=ORDER_CONFIRMED, variables={"1": "Ana"})
    await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    samples = await scrape(metrics_url(engine.server))
    assert value(samples, "notifier_content_api_requests_total", outcome="unavailable") == 1
    assert value(samples, "notifier_template_check_fallbacks_total") == 1


@pytest.mark.parametrize("engine_env", [{"ADMIN_WHATSAPP_NUMBERS": "+14155550101"}], indirect=True)
async def test_admin_notifications_are_checked_against_the_template(
    engine: Engine, database: TestDb
) -> None:
    order = pb.NotifyOrderRequest(
        order_id="A-1",
        customer_name="Ana",
        customer_email="ana@example.com",
        items=[pb.OrderItem(title="Mug", quantity=1, unit_price="12.50")],
        total="12.50",
        currency="USD",
        content_sid=ORDER_CONFIRMED,
        variables={"1": "Ana"},
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await engine.stub.NotifyOrder(order)
    assert violations(info.value) == [('variables["2"]', "is missing: the template uses {{2}}")]
    assert count_rows(database, "messages") == 0
    order.variables["2"] = "A-1"
    reply = await engine.stub.NotifyOrder(order)
    await engine.until_status(reply.deliveries[0].message_id, pb.MESSAGE_STATUS_QUEUED)
