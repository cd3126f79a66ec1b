"""SIGKILL in the middle of a 2,000-message dispatch: nothing lost, and only messages in
flight at the kill may reach Twilio twice."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest

from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from tests.support.databases import TestDb
from tests.support.process import send_many, sending_env, start_server

pytestmark = pytest.mark.backends("sqlite", "postgresql")

TOTAL = 2000


def _env(db: TestDb, emu: EmulatorServer) -> dict[str, str]:
    return sending_env(
        db,
        emu,
        NOTIFIER_RATE_LIMIT_PER_SECOND="2000",
        NOTIFIER_LEASE_SECONDS="3",
        NOTIFIER_TWILIO_TIMEOUT_SECONDS="2",
    )


def _db_state(db: TestDb) -> tuple[Counter[str], set[str]]:
    statuses = Counter(s for (s,) in db.rows("SELECT status FROM messages"))
    leased = {
        body
        for (body,) in db.rows(
            "SELECT body FROM messages WHERE lease_owner IS NOT NULL AND status = 'pending'"
        )
    }
    return statuses, leased


@pytest.mark.slow
async def test_sigkill_mid_dispatch_loses_nothing(database: TestDb) -> None:
    db = database
    # Twilio answering in 0.1 s bounds dispatch at 320/s (32 requests in flight), so
    # the 2,000 messages are still going out when the last is accepted and the kill
    # lands mid-dispatch. At 5 ms the dispatcher, woken on acceptance, kept pace with
    # the 64 callers and had sent all 2,000 before the kill (a CI rehearsal).
    async with EmulatorServer(faults=Faults(latency_seconds=0.1)) as emu:
        env = _env(db, emu)
        first = await asyncio.to_thread(start_server, env, "grpc")
        ids = await send_many(first.address, [f"m{i:04d}" for i in range(TOTAL)], concurrency=64)
        assert len(set(ids)) == TOTAL
        deadline = time.monotonic() + 60
        while len(emu.state.accepted) < TOTAL // 4:
            assert time.monotonic() < deadline, "dispatch did not get going"
            await asyncio.sleep(0.01)
        first.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.proc.wait, 10)
        at_kill = len(emu.state.accepted)
        statuses, in_flight = await asyncio.to_thread(_db_state, db)
        assert sum(statuses.values()) == TOTAL  # every accepted message is stored
        assert 0 < at_kill < TOTAL, "the kill did not land mid-dispatch"

        second = await asyncio.to_thread(start_server, env, "grpc")
        try:
            deadline = time.monotonic() + 90
            while True:
                statuses, _ = await asyncio.to_thread(_db_state, db)
                if statuses.get("queued", 0) == TOTAL:
                    break
                assert time.monotonic() < deadline, f"not all sent: {statuses}"
                await asyncio.sleep(0.2)
        finally:
            assert await asyncio.to_thread(second.stop) == 0

        sent = Counter(m.body for m in emu.state.accepted)
        assert set(sent) == {f"m{i:04d}" for i in range(TOTAL)}  # nothing lost
        duplicates = {body for body, n in sent.items() if n > 1}
        assert duplicates <= in_flight  # only what was in flight at the kill
        assert len(duplicates) <= 32  # NOTIFIER_DISPATCH_CONCURRENCY
        print(
            f"\nkilled after {at_kill} sends; {len(in_flight)} in flight; "
            f"{len(duplicates)} sent twice"
        )
