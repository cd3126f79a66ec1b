"""The webhook sidecar: signed status callbacks, inbound messages, health and metrics.

The tests drive the Starlette app over ASGI against a real database (a SQLite file, and
PostgreSQL); the whole path on real ports (dispatcher -> emulator -> signed callback ->
sidecar) is in tests/e2e/test_webhooks_path.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import grpc
import httpx
import pytest
from twilio.request_validator import RequestValidator

from notifier.config import Settings
from notifier.domain.inbound import Keywords
from notifier.domain.model import AttemptRecord, Channel, NewMessage, Status, Transition
from notifier.storage.engine import Database
from notifier.storage.repository import Repository
from notifier.webhooks.app import WebhookConfig, create_webhook_app
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb, count_rows
from tests.support.rpc import details
from tests.support.webhooks import INBOUND_URL, OLD_TOKEN, SID, STATUS_URL, TOKEN, queued_message

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

pytestmark = pytest.mark.backends("sqlite", "postgresql")


@pytest.fixture
def repo(db: Database) -> Repository:
    return Repository(db)


@pytest.fixture
async def client(repo: Repository) -> AsyncIterator[httpx.AsyncClient]:
    config = WebhookConfig(
        status_url=STATUS_URL,
        inbound_url=INBOUND_URL,
        status_path="/api/v1/whatsapp/status",
        inbound_path="/api/v1/whatsapp/webhook",
        tokens=[TOKEN, OLD_TOKEN],
        max_bytes=4096,
        keywords=Keywords(frozenset({"STOP", "UNSUBSCRIBE"}), frozenset({"START"})),
    )
    app = create_webhook_app(repo, config)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sidecar.internal") as c:
        yield c


def signed(
    url: str, params: dict[str, str], token: str = TOKEN, query: str = ""
) -> tuple[str, dict[str, str]]:
    full = f"{url}?{query}" if query else url
    signature = RequestValidator(token).compute_signature(full, params)
    return urlencode(params), {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def callback(status: str, sid: str = SID, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": "AC" + "0" * 32,
        "From": "whatsapp:+14155238886",
        "To": "whatsapp:+14155550100",
        "ApiVersion": "2010-04-01",
        "ChannelPrefix": "whatsapp",
        **extra,
    }


async def post_status(
    client: httpx.AsyncClient, params: dict[str, str], token: str = TOKEN, query: str = ""
) -> httpx.Response:
    body, headers = signed(STATUS_URL, params, token, query)
    path = "/api/v1/whatsapp/status" + (f"?{query}" if query else "")
    return await client.post(path, content=body, headers=headers)


def history(database: TestDb, mid: str) -> list[tuple[Any, ...]]:
    return database.rows(
        "SELECT status, source, applied FROM status_events WHERE message_id = ? ORDER BY id", mid
    )


def message_row(database: TestDb, mid: str) -> dict[str, Any]:
    row = database.record("SELECT * FROM messages WHERE id = ?", mid)
    assert row is not None
    return row


async def test_signed_callbacks_move_the_message_forward(
    client: httpx.AsyncClient, repo: Repository, database: TestDb
) -> None:
    mid = await queued_message(repo)
    for status in ("sent", "delivered", "read"):
        reply = await post_status(client, callback(status))
        assert reply.status_code == 200
    row = message_row(database, mid)
    assert row["status"] == "read"
    assert row["sent_at"] <= row["delivered_at"] <= row["read_at"]
    assert history(database, mid)[-3:] == [
        ("sent", "callback", 1),
        ("delivered", "callback", 1),
        ("read", "callback", 1),
    ]


@pytest.mark.parametrize(
    "forge",
    [
        "missing signature",
        "wrong token",
        "other URL",
        "tampered status",
        "added parameter",
        "garbage signature",
    ],
)
async def test_forged_callbacks_are_403_and_store_nothing(
    client: httpx.AsyncClient, repo: Repository, database: TestDb, forge: str
) -> None:
    mid = await queued_message(repo)
    before = history(database, mid)
    params = callback("delivered")
    body, headers = signed(STATUS_URL, params)
    if forge == "missing signature":
        del headers["X-Twilio-Signature"]
    elif forge == "wrong token":
        body, headers = signed(STATUS_URL, params, token="c" * 32)
    elif forge == "other URL":
        body, headers = signed("https://evil.example.com/api/v1/whatsapp/status", params)
    elif forge == "tampered status":
        body = urlencode({**params, "MessageStatus": "read"})
    elif forge == "added parameter":
        body = urlencode({**params, "ErrorCode": "30003"})
    else:
        headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
    reply = await client.post("/api/v1/whatsapp/status", content=body, headers=headers)
    assert reply.status_code == 403
    assert history(database, mid) == before
    assert message_row(database, mid)["status"] == "queued"


async def test_both_tokens_validate_during_a_rotation(
    client: httpx.AsyncClient, repo: Repository, database: TestDb
) -> None:
    mid = await queued_message(repo)
    assert (await post_status(client, callback("sent"), token=OLD_TOKEN)).status_code == 200
    assert (await post_status(client, callback("delivered"), token=TOKEN)).status_code == 200
    assert message_row(database, mid)["status"] == "delivered"


async def test_replayed_and_duplicated_callbacks_are_harmless(
    client: httpx.AsyncClient, repo: Repository, database: TestDb
) -> None:
    mid = await queued_message(repo)
    for _ in range(3):
        assert (await post_status(client, callback("delivered"))).status_code == 200
    assert [h for h in history(database, mid) if h[1] == "callback"] == [
        ("delivered", "callback", 1)
    ]
    metrics = (await client.get("/metrics")).text
    assert 'notifier_status_callbacks_total{result="duplicate"} 2.0' in metrics


async def test_out_of_order_callbacks_never_move_back(
    client: httpx.AsyncClient, repo: Repository, database: TestDb
) -> None:
    mid = await queued_message(repo)
    for status in ("read", "delivered", "sent", "failed"):
        assert (await post_status(client, callback(status))).status_code == 200
    row = message_row(database, mid)
    assert row["status"] == "read"
    assert row["sent_at"] is not None  # the late "sent" still dates the step
    assert history(database, mid)[-4:] == [
        ("read", "callback", 1),
        ("delivered", "callback", 0),
        ("sent", "callback", 0),
        ("failed", "callback", 0),
    ]


async def test_callbacks_of_an_ambiguous_earlier_send_do_not_mask_the_current_one(
    client: httpx.AsyncClient, repo: Repository, database: TestDb
) -> None:
    """Found by the emulator storms: after an ambiguous attempt Twilio had taken (SID A)
    and a retry it accepted (SID B), A's callbacks were recorded, and then B's own were
    judged duplicates of them: the message stayed at queued for good."""
    mid = await queued_message(repo, sid=None)
    first = "SM" + "a" * 32
    ambiguous = AttemptRecord(1, 2, "ambiguous", 500, error_code=20500)
    await repo.record_attempt(mid, ambiguous, Transition(Status.PENDING, retry_at_ms=3))
    accepted = AttemptRecord(4, 5, "accepted", 201, twilio_sid=SID)
    await repo.record_attempt(mid, accepted, Transition(Status.QUEUED, twilio_sid=SID))
    for status in ("sent", "delivered", "read"):
        reply = await post_status(client, callback(status, sid=first), query=f"message_id={mid}")
        assert reply.status_code == 200
    assert message_row(database, mid)["status"] == "queued"  # A's callbacks: history only
    for status in ("sent", "delivered", "read"):
        reply = await post_status(client, callback(status), query=f"message_id={mid}")
        assert reply.status_code == 200
    assert message_row(database, mid)["status"] == "read"
    assert [h for h in history(database, mid) if h[1].startswith("callback")] == [
        ("sent", "callback-other", 0),
        ("delivered", "callback-other", 0),
        ("read", "callback-other", 0),
        ("sent", "callback", 1),
        ("delivered", "callback", 1),
        ("read", "callback", 1),
    ]


async def test_failure_carries_the_code_and_its_meaning(
    client: httpx.AsyncClient, repo: Repository, stub: Stub
) -> None:
    mid = await queued_message(repo)
    await post_status(client, callback("sent"))
    reply = await post_status(
        client, callback("undelivered", ErrorCode="30003", ErrorMessage="Unreachable")
    )
    assert reply.status_code == 200
    got = await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=mid))
    assert got.message.status == pb.MESSAGE_STATUS_UNDELIVERED
    assert (got.message.error_code, got.message.error_message) == (
        30003,
        "Unreachable destination handset",
    )
    assert got.message.timestamps.HasField("undelivered")


async def test_callback_finds_its_message_by_id_before_the_sid_is_recorded(
    client: httpx.AsyncClient, repo: Repository, database: TestDb
) -> None:
    mid = await queued_message(repo, sid=None)  # the process died before recording the SID
    reply = await post_status(client, callback("sent"), query=f"message_id={mid}")
    assert reply.status_code == 200
    row = message_row(database, mid)
    assert (row["status"], row["twilio_sid"]) == ("sent", SID)


async def test_unknown_sid_is_acknowledged_and_counted(
    client: httpx.AsyncClient, database: TestDb
) -> None:
    reply = await post_status(client, callback("delivered", sid="SM" + "9" * 32))
    assert reply.status_code == 200
    assert count_rows(database, "status_events") == 0
    metrics = (await client.get("/metrics")).text
    assert 'notifier_status_callbacks_total{result="unknown"} 1.0' in metrics


async def test_malformed_and_oversized_bodies(
    client: httpx.AsyncClient, repo: Repository, database: TestDb
) -> None:
    mid = await queued_message(repo)
    before = history(database, mid)
    path = "/api/v1/whatsapp/status"
    body, headers = signed(STATUS_URL, callback("sent"))
    as_json = {**headers, "Content-Type": "application/json"}
    assert (await client.post(path, content=body, headers=as_json)).status_code == 400
    bad_utf8 = {**headers}
    reply = await client.post(path, content=b"MessageSid=%ff%fe&x=1", headers=bad_utf8)
    assert reply.status_code == 400
    missing = {k: v for k, v in callback("sent").items() if k != "MessageSid"}
    assert (await post_status(client, missing)).status_code == 400
    big = {**callback("sent"), "Padding": "x" * 5000}
    assert (await post_status(client, big)).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(10):
            yield b"x" * 1000

    streamed = await client.post(path, content=chunks(), headers=headers)
    assert streamed.status_code == 413
    assert history(database, mid) == before


def inbound(body: str, sid: str = "SM" + "2" * 32, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": "whatsapp:+14155550100",
        "To": "whatsapp:+14155238886",
        "Body": body,
        "NumMedia": "0",
        "ProfileName": "Ana",
        "WaId": "14155550100",
        **extra,
    }


async def post_inbound(client: httpx.AsyncClient, params: dict[str, str]) -> httpx.Response:
    body, headers = signed(INBOUND_URL, params)
    return await client.post("/api/v1/whatsapp/webhook", content=body, headers=headers)


async def test_inbound_message_is_stored_and_answered_with_empty_twiml(
    client: httpx.AsyncClient, database: TestDb
) -> None:
    params = inbound(
        "Here is the photo",
        NumMedia="1",
        MediaUrl0="https://api.twilio.com/media/ME1",
        MediaContentType0="image/jpeg",
    )
    reply = await post_inbound(client, params)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/xml")
    assert reply.text == '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    assert (await post_inbound(client, params)).status_code == 200  # Twilio retried
    rows = database.rows(
        "SELECT from_addr, body, media, profile_name, channel FROM inbound_messages"
    )
    window = database.rows("SELECT last_inbound_at, opted_out FROM recipients")
    assert rows == [
        (
            "+14155550100",
            "Here is the photo",
            '[{"url": "https://api.twilio.com/media/ME1", "content_type": "image/jpeg"}]',
            "Ana",
            "whatsapp",
        )
    ]
    assert len(window) == 1
    assert window[0][0] is not None
    assert window[0][1] == 0


async def test_forged_inbound_is_refused_and_not_stored(
    client: httpx.AsyncClient, database: TestDb
) -> None:
    body, headers = signed(INBOUND_URL, inbound("STOP"), token="c" * 32)
    reply = await client.post("/api/v1/whatsapp/webhook", content=body, headers=headers)
    assert reply.status_code == 403
    assert count_rows(database, "inbound_messages") == 0
    assert count_rows(database, "recipients") == 0


async def test_opt_out_blocks_the_next_send_until_opt_in(
    client: httpx.AsyncClient, stub: Stub, database: TestDb
) -> None:
    ok = await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="before"))
    assert ok.status == pb.MESSAGE_STATUS_PENDING
    assert (await post_inbound(client, inbound(" stop ", sid="SM" + "3" * 32))).status_code == 200
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendMessage(pb.SendMessageRequest(to="whatsapp:+14155550100", body="after"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    (failure,) = details(info.value)
    assert failure.violations[0].type == "OPTED_OUT"
    assert count_rows(database, "messages") == 1  # nothing half-written
    # A keyword inside a sentence is not an opt-out, and START opts back in.
    await post_inbound(client, inbound("please stop the music", sid="SM" + "4" * 32))
    await post_inbound(client, inbound("START", sid="SM" + "5" * 32))
    again = await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="welcome back"))
    assert again.status == pb.MESSAGE_STATUS_PENDING
    metrics = (await client.get("/metrics")).text
    assert 'notifier_inbound_messages_total{kind="opt_out"} 1.0' in metrics
    assert 'notifier_inbound_messages_total{kind="opt_in"} 1.0' in metrics


async def test_health_readiness_and_metrics(client: httpx.AsyncClient, repo: Repository) -> None:
    await queued_message(repo)
    await repo.add_message(
        NewMessage(to="+14155550100", channel=Channel.WHATSAPP, body="x"),
        caller="",
        request_hash=None,
        key_ttl_ms=1,
    )
    assert (await client.get("/healthz")).text == "ok"
    assert (await client.get("/readyz")).status_code == 200
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'notifier_messages{status="queued"} 1.0' in metrics.text
    assert "notifier_queue_depth 1.0" in metrics.text
    assert "notifier_oldest_pending_age_seconds" in metrics.text


async def test_optionally_refuse_free_text_outside_the_24_hour_window(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    from notifier.server import create_server

    strict = settings.model_copy(update={"refuse_outside_window": True})
    server = await create_server(strict)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            from notifier_proto.v1 import notifier_pb2_grpc

            stub = notifier_pb2_grpc.NotifierStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="hello"))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "63016" in (info.value.details() or "")
            template = await stub.SendMessage(
                pb.SendMessageRequest(to="+14155550100", content_sid="HX" + "0" * 32)
            )
            assert template.status == pb.MESSAGE_STATUS_PENDING  # templates are always allowed
            await post_inbound(client, inbound("hi there", sid="SM" + "6" * 32))
            inside = await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="hi"))
            assert inside.status == pb.MESSAGE_STATUS_PENDING  # the window is open now
    finally:
        await server.stop(grace=1)


async def test_a_requeued_message_follows_its_new_send(
    client: httpx.AsyncClient, repo: Repository, database: TestDb, stub: Stub
) -> None:
    from notifier.domain.model import MessageQuery

    mid = await queued_message(repo)
    await post_status(client, callback("sent"))
    await post_status(client, callback("undelivered", ErrorCode="30003"))
    outcome = await repo.requeue(MessageQuery(message_ids=(mid,)), limit=10, validity_ms=None)
    assert outcome.requeued == (mid,)
    assert message_row(database, mid)["twilio_sid"] is None
    second = "SM" + "7" * 32
    attempt = AttemptRecord(3, 4, "accepted", 201, twilio_sid=second)
    await repo.record_attempt(mid, attempt, Transition(Status.QUEUED, twilio_sid=second))
    for status in ("sent", "delivered"):
        assert (await post_status(client, callback(status, sid=second))).status_code == 200
    row = message_row(database, mid)
    assert (row["status"], row["twilio_sid"]) == ("delivered", second)
    # A late callback about the first send no longer moves the message.
    await post_status(client, callback("read"))
    assert message_row(database, mid)["status"] == "delivered"
    # Its step times are the new send's: the history keeps both sends, the timestamps
    # and the delivery time do not mix them (the first send's undelivered and read
    # are not this send's).
    got = await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=mid))
    sent = [e for e in got.history if e.status == pb.MESSAGE_STATUS_SENT]
    delivered = [e for e in got.history if e.status == pb.MESSAGE_STATUS_DELIVERED]
    assert len(sent) == 2
    assert got.message.timestamps.sent == sent[-1].occurred_at
    assert got.message.timestamps.delivered == delivered[-1].occurred_at
    assert not got.message.timestamps.HasField("undelivered")
    assert not got.message.timestamps.HasField("read")
    assert got.message.delivery_time_ms == (
        delivered[-1].occurred_at.ToMilliseconds() - sent[-1].occurred_at.ToMilliseconds()
    )
