"""SendBulk through the real path: a real server, SQLite file, and the Twilio emulator.

Under load (a bulk backlog, storage slower than the caller): tests/e2e/test_bulk_load.py."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.bulk import bulk_requests
from tests.support.databases import count_rows
from tests.support.engine import Engine, engine_settings, start_engine

if TYPE_CHECKING:
    pass

TEMPLATE = "HX" + "cd" * 16


@pytest.fixture
async def engine(db_path: Path, emulator: EmulatorServer) -> AsyncIterator[Engine]:
    # Exactly-once below needs no ambiguous outcomes: a 0.5 s Twilio timeout on a loaded
    # machine turns slow answers into ambiguous ones, which are (rightly) sent again.
    settings = engine_settings(
        db_path,
        emulator,
        NOTIFIER_RATE_LIMIT_PER_SECOND=5000,
        NOTIFIER_TWILIO_TIMEOUT_SECONDS=5,
    )
    server, channel = await start_engine(settings)
    yield Engine(server, channel)
    await channel.close()
    await server.stop(grace=1)


@pytest.mark.slow
async def test_ten_thousand_items_with_bad_ones_mixed_in(
    engine: Engine, emulator: EmulatorServer, db_path: Path
) -> None:
    total = 10_000
    results: list[pb.BulkItemResult] = []
    async for reply in engine.stub.SendBulk(bulk_requests(total)):
        results.extend(reply.results)
    assert [r.index for r in results] == list(range(total))  # every item, in order
    assert [r.correlation_id for r in results] == [f"c{i}" for i in range(total)]
    bad = {i for i in range(total) if i % 10 == 3 or i % 25 == 7}
    refused = {r.index for r in results if r.WhichOneof("result") == "error"}
    assert refused == bad
    sample = results[3].error
    assert sample.code == "INVALID_ARGUMENT"
    assert [v.field for v in sample.violations] == ["to"]
    assert [v.field for v in results[7].error.violations] == ["body"]
    accepted = [r.accepted.message_id for r in results if r.WhichOneof("result") == "accepted"]
    assert len(set(accepted)) == total - len(bad) == count_rows(db_path, "messages")
    # Every good item is sent exactly once.
    deadline = time.monotonic() + 120
    while len(emulator.state.accepted) < len(accepted):
        assert time.monotonic() < deadline, f"{len(emulator.state.accepted)} sent"
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)
    sent = Counter(m.body for m in emulator.state.accepted)
    assert set(sent) == {f"m{i}" for i in range(total) if i not in bad}
    assert max(sent.values()) == 1


async def test_shared_content_per_item_variables_and_idempotency(
    engine: Engine, emulator: EmulatorServer
) -> None:
    defaults = pb.BulkContent(content_sid=TEMPLATE, variables={"1": "Shop", "2": "-"}, tags=["c1"])
    requests = [
        pb.SendBulkRequest(
            defaults=defaults,
            items=[
                pb.BulkItem(correlation_id="a", to="+14155550100", variables={"2": "Ana"}),
                pb.BulkItem(correlation_id="b", to="+14155550101", idempotency_key="k-b"),
            ],
        ),
        pb.SendBulkRequest(
            items=[
                pb.BulkItem(correlation_id="b-again", to="+14155550101", idempotency_key="k-b"),
                pb.BulkItem(correlation_id="own", to="+14155550102", body="own text"),
                pb.BulkItem(
                    correlation_id="clash", to="+14155550103", body="x", idempotency_key="k-b"
                ),
            ]
        ),
    ]
    results = {
        r.correlation_id: r
        async for reply in engine.stub.SendBulk(iter(requests))
        for r in reply.results
    }
    assert results["b-again"].accepted.message_id == results["b"].accepted.message_id
    assert results["b-again"].accepted.replayed
    assert results["clash"].error.code == "ALREADY_EXISTS"
    for cid in ("a", "b", "own"):
        await engine.until_status(results[cid].accepted.message_id, pb.MESSAGE_STATUS_QUEUED)
    sent = {m.to: m for m in emulator.state.accepted}
    assert sent["whatsapp:+14155550100"].content_variables == '{"1": "Shop", "2": "Ana"}'
    assert sent["whatsapp:+14155550101"].content_variables == '{"1": "Shop", "2": "-"}'
    assert sent["whatsapp:+14155550102"].body == "own text"
    assert sent["whatsapp:+14155550102"].content_sid is None
    tagged = await engine.stub.ListMessages(
        pb.ListMessagesRequest(filter=pb.MessageFilter(tag="c1"))
    )
    assert len(tagged.messages) == 3
