"""The real dispatcher against Prism serving Twilio's own OpenAPI description (issue 13).

Prism answers every send with the description's example, so every message gets the same
``sid``. Before issue 13 the second message's attempt broke messages.twilio_sid's
uniqueness, was never recorded, and the message was POSTed again after every lease,
forever. Now each message is sent once and reaches QUEUED; the SID a message cannot
hold stays on its attempt, flagged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from notifier.server import NotifierServer, create_server
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.databases import TestDb
from tests.support.metrics import metrics_url, scrape, total
from tests.support.prism import Prism, prism_settings, running_prism
from tests.support.waiting import eventually

MESSAGES = 5

pytestmark = pytest.mark.backends("sqlite", "postgresql")


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prism]:
    with running_prism(tmp_path_factory.mktemp("prism")) as running:
        yield running


@pytest.fixture
async def notifier(database: TestDb, prism: Prism) -> AsyncIterator[NotifierServer]:
    # A short lease: a resend loop would show within the test.
    settings = prism_settings(database, prism.url, NOTIFIER_LEASE_SECONDS=2)
    server = await create_server(settings)
    await server.start()
    yield server
    await server.stop(grace=1)


def _posts(prism: Prism, since: int) -> int:
    lines = prism.log_path.read_text().splitlines()[since:]
    return sum(1 for ln in lines if "Request received" in ln)


async def test_every_message_is_sent_once_and_queued_though_prism_repeats_its_sid(
    notifier: NotifierServer, prism: Prism
) -> None:
    mark = prism.mark()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
        stub = notifier_pb2_grpc.NotifierStub(channel)
        ids = [
            (
                await stub.SendMessage(pb.SendMessageRequest(to=f"+1415555010{i}", body="hi"))
            ).message_id
            for i in range(MESSAGES)
        ]

        async def all_queued() -> bool:
            for mid in ids:
                got = await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=mid))
                if got.message.status != pb.MESSAGE_STATUS_QUEUED:
                    return False
            return True

        await eventually(all_queued, "every message QUEUED", within=30)
        states = [
            await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=mid)) for mid in ids
        ]
    # Longer than a lease: a message left unrecorded would have been claimed and sent again.
    await eventually_quiet(prism, mark)
    assert _posts(prism, mark) == MESSAGES  # one POST per message
    assert [len(s.attempts) for s in states] == [1] * MESSAGES
    holders = [s for s in states if s.message.twilio_sid]
    assert len(holders) == 1  # the SID is unique to one message...
    sid = holders[0].message.twilio_sid
    flagged = [s for s in states if not s.message.twilio_sid]
    for s in flagged:  # ...and kept, flagged, on the others' attempts
        assert f"Twilio's SID {sid} is already held by message" in s.attempts[0].error_message
    samples = await scrape(metrics_url(notifier))
    assert total(samples, "notifier_twilio_sends_total", outcome="accepted") == MESSAGES
    assert total(samples, "notifier_outbox_claims_total") == MESSAGES
    print(
        f"prism run: {MESSAGES} messages, {_posts(prism, mark)} POSTs, states "
        f"{[pb.MessageStatus.Name(s.message.status) for s in states]}, "
        f"attempts {[len(s.attempts) for s in states]}"
    )


async def eventually_quiet(prism: Prism, mark: int) -> None:
    """Wait out two leases (2 s each) and see that no POST came meanwhile."""
    before = _posts(prism, mark)
    await asyncio.sleep(4.5)
    assert _posts(prism, mark) == before, "a message was POSTed again after its lease"
