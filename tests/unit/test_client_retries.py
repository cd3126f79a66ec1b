"""What the client promises about retries (clients/python/src/notifier_client/channel.py).

Retries are gRPC core's, driven by the service config the client puts on its channel:
UNAVAILABLE only, up to 5 attempts, only for RPCs safe to repeat, SendMessage only while
the client gives every send an idempotency key. So these tests read that config off the
channel the sync client builds, check the keys in the requests, and check that the client
adds no retry loop of its own. The attempts themselves happen below grpc_testing's fake;
tests/test_client.py watches them over a real port (same key on both attempts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from notifier_client import errors
from notifier_client.channel import RetryPolicy
from notifier_client.sync import SyncNotifierClient
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.fake_channel import AioOverTesting, Connect, connecting, exchange

TO = "+14155550101"
AUTO_KEY = re.compile(r"auto-[0-9a-f]{32}")


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[Connect]:
    with connecting(monkeypatch) as connect:
        yield connect


def _retried(channel: AioOverTesting) -> dict[str, dict[str, Any]]:
    """RPC name -> its retryPolicy, from the service config the channel was given."""
    config = json.loads(channel.options["grpc.service_config"])
    return {
        name["method"]: method_config["retryPolicy"]
        for method_config in config["methodConfig"]
        for name in method_config["name"]
        if name["service"] == "notifier.v1.Notifier"
    }


RPCS = [m.name for m in pb.DESCRIPTOR.services_by_name["Notifier"].methods]
# (RPC, retried with retry_sends on, retried with retry_sends off)
POLICY = [
    ("GetDeliveryStatus", True, True),
    ("GetMetrics", True, True),
    ("ListMessages", True, True),
    ("WatchDeliveryStatus", True, True),
    ("CancelMessage", True, True),
    ("RetryMessages", True, True),
    ("NotifyOrder", True, True),
    ("NotifyAdmins", True, True),
    ("EraseRecipient", True, True),  # idempotent: a repeat erases nothing more
    ("SendMessage", True, False),  # safe only because every send then carries a key
    ("SendBulk", False, False),  # a replayed stream would duplicate items without keys
]


def test_the_policy_table_names_every_rpc() -> None:
    assert sorted(rpc for rpc, *_ in POLICY) == sorted(RPCS)


@pytest.mark.parametrize(("rpc", "with_keys", "without_keys"), POLICY)
def test_which_rpcs_the_channel_retries(
    connect: Connect, rpc: str, with_keys: bool, without_keys: bool
) -> None:
    _, default = connect()
    _, keyless = connect(retry_sends=False)
    assert (rpc in _retried(default), rpc in _retried(keyless)) == (with_keys, without_keys)


def test_only_unavailable_is_retried_five_attempts_with_backoff(connect: Connect) -> None:
    _, channel = connect()
    policies = _retried(channel).values()
    assert {json.dumps(p, sort_keys=True) for p in policies} == {
        json.dumps(
            {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2.0s",
                "backoffMultiplier": 2.0,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
            sort_keys=True,
        )
    }
    assert channel.options["grpc.enable_retries"] == 1


def test_a_retry_policy_of_ones_own_or_none(connect: Connect) -> None:
    _, tuned = connect(retry=RetryPolicy(max_attempts=3, initial_backoff=0.5))
    assert {p["maxAttempts"] for p in _retried(tuned).values()} == {3}
    assert {p["initialBackoff"] for p in _retried(tuned).values()} == {"0.5s"}
    _, plain = connect(retry=None)
    assert "grpc.service_config" not in plain.options


@pytest.mark.parametrize(
    "code",
    [C for C in grpc.StatusCode if C is not grpc.StatusCode.OK],
    ids=lambda c: c.name,
)
def test_the_client_adds_no_retry_loop_of_its_own(connect: Connect, code: grpc.StatusCode) -> None:
    """One failed attempt on the channel is one exception: core's retries (UNAVAILABLE)
    would otherwise be multiplied by a Python loop on top."""
    client, channel = connect()
    refused = exchange(channel, "SendMessage", lambda: client.send(TO, "hi"), code=code)
    with pytest.raises(errors.NotifierError) as info:
        refused.result()
    assert info.value.code is code
    assert len(channel.timeouts) == 1


Call = Callable[[SyncNotifierClient], Any]
custom = pb.CustomNotification(title="Disk", body="almost full")
booking = pb.BookingNotification(booking_id="b-1")
# (case, retry_sends, RPC, call, the idempotency key in the request: a str or AUTO_KEY)
KEYS: list[tuple[str, bool, str, Call, str | re.Pattern[str]]] = [
    ("send, no key", True, "SendMessage", lambda c: c.send(TO, "hi"), AUTO_KEY),
    ("send, caller's key", True, "SendMessage", lambda c: c.send(TO, idempotency_key="k-1"), "k-1"),
    ("send, retry_sends off", False, "SendMessage", lambda c: c.send(TO, "hi"), ""),
    (
        "send, off, caller's key",
        False,
        "SendMessage",
        lambda c: c.send(TO, idempotency_key="k"),
        "k",
    ),
    ("custom, no key", True, "NotifyAdmins", lambda c: c.notify_admins(custom), AUTO_KEY),
    ("custom, retry_sends off", False, "NotifyAdmins", lambda c: c.notify_admins(custom), ""),
    (
        "custom, caller's key",
        True,
        "NotifyAdmins",
        lambda c: c.notify_admins(custom, idempotency_key="k-2"),
        "k-2",
    ),
    ("booking: its own id dedupes", True, "NotifyAdmins", lambda c: c.notify_admins(booking), ""),
]


@pytest.mark.parametrize(
    ("retry_sends", "rpc", "call", "key"), [k[1:] for k in KEYS], ids=[k[0] for k in KEYS]
)
def test_the_idempotency_key_that_makes_a_retry_safe(
    connect: Connect, retry_sends: bool, rpc: str, call: Call, key: str | re.Pattern[str]
) -> None:
    client, channel = connect(retry_sends=retry_sends)
    sent = exchange(channel, rpc, lambda: call(client))
    sent.result()
    if isinstance(key, re.Pattern):
        assert key.fullmatch(sent.request.idempotency_key)
    else:
        assert sent.request.idempotency_key == key


def test_each_send_gets_its_own_generated_key(connect: Connect) -> None:
    """A key is per message: two sends of the same text are two messages, not a replay."""
    client, channel = connect()
    keys = {
        exchange(channel, "SendMessage", lambda: client.send(TO, "hi")).request.idempotency_key
        for _ in range(3)
    }
    assert len(keys) == 3
