"""SyncNotifierClient against grpc_testing's fake channel: requests, replies, deadlines,
the bearer token, closing. No server and no sockets: the test plays the server
(tests/support/fake_channel.py). Error mapping and retries have their own modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from notifier_client.client import Deadlines
from notifier_client.errors import NotifierError
from notifier_client.sync import SyncNotifierClient
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.fake_channel import Connect, connecting, exchange

TO = "+14155550101"
ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[Connect]:
    with connecting(monkeypatch) as connect:
        yield connect


Call = Callable[[SyncNotifierClient], Any]

DEADLINES: list[tuple[str, Deadlines, str, Call, float | None]] = [
    # (case, client deadlines, RPC, call, timeout the channel is given)
    ("unary default", Deadlines(), "GetDeliveryStatus", lambda c: c.status(ID), 10.0),
    ("send default", Deadlines(), "SendMessage", lambda c: c.send(TO, "hi"), 10.0),
    (
        "send waiting for Twilio",
        Deadlines(),
        "SendMessage",
        lambda c: c.send(TO, "hi", wait_for_acceptance=True),
        40.0,
    ),
    ("explicit timeout", Deadlines(), "GetMetrics", lambda c: c.metrics(timeout=2.5), 2.5),
    (
        "timeout=None: none",
        Deadlines(),
        "CancelMessage",
        lambda c: c.cancel(ID, timeout=None),
        None,
    ),
    ("client default", Deadlines(unary=3.0), "ListMessages", lambda c: c.list(), 3.0),
    (
        "client default",
        Deadlines(unary=3.0),
        "NotifyAdmins",
        lambda c: c.notify_admins(pb.LowStockNotification(product_id="p-1")),
        3.0,
    ),
    (
        "send-and-wait default off",
        Deadlines(send_and_wait=None),
        "SendMessage",
        lambda c: c.send(TO, "hi", wait_for_acceptance=True),
        None,
    ),
    (
        "explicit beats client default",
        Deadlines(unary=3.0),
        "RetryMessages",
        lambda c: c.retry([ID], timeout=0.5),
        0.5,
    ),
]


@pytest.mark.parametrize(
    ("deadlines", "rpc", "call", "timeout"),
    [case[1:] for case in DEADLINES],
    ids=[f"{case[0]}-{case[2]}" for case in DEADLINES],
)
def test_each_call_hands_its_deadline_to_the_channel(
    connect: Connect, deadlines: Deadlines, rpc: str, call: Call, timeout: float | None
) -> None:
    client, channel = connect(deadlines=deadlines)
    seen = exchange(channel, rpc, lambda: call(client))
    seen.result()
    assert seen.timeout == timeout


def test_the_bearer_token_rides_in_the_metadata_of_every_call(connect: Connect) -> None:
    client, channel = connect(token="s3cret")
    first = exchange(channel, "GetMetrics", client.metrics, pb.GetMetricsResponse(total=7))
    second = exchange(channel, "CancelMessage", lambda: client.cancel(ID))
    assert first.result().total == 7
    assert first.metadata["authorization"] == second.metadata["authorization"] == "Bearer s3cret"
    anonymous, plain = connect()
    assert "authorization" not in exchange(plain, "GetMetrics", anonymous.metrics).metadata


def test_requests_are_built_from_plain_values_and_replies_come_back_typed(
    connect: Connect,
) -> None:
    client, channel = connect()
    reply = pb.SendMessageResponse(message_id=ID, status=pb.MESSAGE_STATUS_PENDING)
    sent = exchange(
        channel,
        "SendMessage",
        lambda: client.send(TO, "hi", channel="sms", tags=["t1"], idempotency_key="k-1"),
        reply,
    )
    assert sent.result() == reply
    assert (sent.request.to, sent.request.body, sent.request.channel) == (TO, "hi", pb.CHANNEL_SMS)
    assert (list(sent.request.tags), sent.request.idempotency_key) == (["t1"], "k-1")
    canceled = pb.Message(message_id=ID, status=pb.MESSAGE_STATUS_CANCELED)
    reply_message = exchange(
        channel,
        "CancelMessage",
        lambda: client.cancel(ID),
        pb.CancelMessageResponse(message=canceled),
    )
    assert reply_message.result() == canceled  # cancel unwraps the reply
    by_sid = exchange(channel, "GetDeliveryStatus", lambda: client.status(twilio_sid="SM1"))
    assert by_sid.request.WhichOneof("ref") == "twilio_sid"


def test_list_all_is_a_blocking_iterator_that_fetches_pages_as_read(connect: Connect) -> None:
    client, channel = connect()
    pages = iter(client.list_all(page_size=2))
    first = exchange(
        channel,
        "ListMessages",
        lambda: next(pages),
        pb.ListMessagesResponse(
            messages=[pb.Message(message_id="m-1"), pb.Message(message_id="m-2")],
            next_page_token="p2",
        ),
    )
    assert first.result().message_id == "m-1"
    assert next(pages).message_id == "m-2"  # same page: no call
    assert (first.request.page_size, first.request.page_token) == (2, "")
    last = exchange(
        channel,
        "ListMessages",
        lambda: [m.message_id for m in pages],
        pb.ListMessagesResponse(messages=[pb.Message(message_id="m-3")]),
    )
    assert last.request.page_token == "p2"
    assert last.result() == ["m-3"]  # no next_page_token: the iteration ends


def test_leaving_the_with_block_closes_the_channel_once(connect: Connect) -> None:
    client, channel = connect()
    with client:
        pass
    assert channel.closed == 1
    client.close()  # closing again is harmless
    assert channel.closed == 1


def test_a_channel_passed_in_stays_the_callers(connect: Connect) -> None:
    _, channel = connect()
    with SyncNotifierClient(channel=channel) as client:
        assert exchange(channel, "GetMetrics", client.metrics).outcome.exception() is None
    assert channel.closed == 0


def test_a_failed_call_raises_in_the_calling_thread(connect: Connect) -> None:
    client, channel = connect()
    failed = exchange(
        channel, "GetMetrics", client.metrics, code=grpc.StatusCode.INTERNAL, details="boom"
    )
    with pytest.raises(NotifierError, match="INTERNAL: boom"):
        failed.result()
