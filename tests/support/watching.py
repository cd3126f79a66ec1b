"""Watching delivery status as a caller does: open a WatchDeliveryStatus stream once the
server has registered it, read its next changes, and what a message's changes are when
the emulator's callbacks come back through the sidecar."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import timestamp_pb2

from notifier.emulator.faults import Faults
from notifier.server import NotifierServer
from notifier.status_feed import StatusFeed
from notifier_proto.v1 import notifier_pb2 as pb

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

WatchCall = grpc.aio.UnaryStreamCall[pb.WatchDeliveryStatusRequest, pb.WatchDeliveryStatusResponse]
# Callbacks a little apart, so the dispatcher has recorded QUEUED before "sent" arrives
# (a callback that overtakes it would rightly leave QUEUED out of the history).
CALLBACKS = Faults(sent_after_seconds=0.15, delivered_after_seconds=0.25, read_after_seconds=0.35)
LIFECYCLE = [
    pb.MESSAGE_STATUS_QUEUED,
    pb.MESSAGE_STATUS_SENT,
    pb.MESSAGE_STATUS_DELIVERED,
    pb.MESSAGE_STATUS_READ,
]
SOURCES = ["dispatcher", "callback", "callback", "callback"]


async def read_changes(
    call: WatchCall, n: int, within: float = 10
) -> list[pb.WatchDeliveryStatusResponse]:
    """The next ``n`` responses of a watch, failing after ``within`` seconds."""
    out: list[pb.WatchDeliveryStatusResponse] = []
    async with asyncio.timeout(within):
        while len(out) < n:
            response = await call.read()
            assert response is not grpc.aio.EOF, f"stream ended after {out}"
            assert isinstance(response, pb.WatchDeliveryStatusResponse)
            out.append(response)
    return out


async def until(check: Callable[[], bool], within: float = 5) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def feed_of(server: NotifierServer) -> StatusFeed:
    assert server.feed is not None
    return server.feed


async def watching(
    server: NotifierServer, stub: Stub, metadata: Any = None, **request: Any
) -> WatchCall:
    """Open a watch and return once the server has registered it (the stream carries
    nothing until a change, so there is no reply to wait for); ``metadata``: the
    caller's, e.g. its bearer token."""
    before = feed_of(server).subscriber_count
    call = stub.WatchDeliveryStatus(pb.WatchDeliveryStatusRequest(**request), metadata=metadata)
    await until(lambda: feed_of(server).subscriber_count > before)
    return call


def in_a_second() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(int(time.time() * 1000) + 1000)
    return ts
