"""SIGTERM in the middle of a dispatch under load, on a real ``notifier serve`` process.

The grace period is shorter than some of the emulator's answers, so at the signal some
sends finish, some are cut with the request out (ambiguous: Twilio may have it), and
claimed messages whose request never began are released. After a restart everything
goes out, and only a message with an ambiguous attempt on record reaches Twilio twice.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from notifier.emulator import DEV_FROM
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.process import notifier_env, start_server

TOTAL = 300


def _env(db: Path, emu: EmulatorServer) -> dict[str, str]:
    return notifier_env(
        db,
        TWILIO_ACCOUNT_SID=emu.account_sid,
        TWILIO_AUTH_TOKEN=emu.auth_token,
        TWILIO_WHATSAPP_FROM=DEV_FROM,
        TWILIO_API_BASE_URL=emu.url,
        NOTIFIER_RATE_LIMIT_PER_SECOND="2000",
        NOTIFIER_TWILIO_TIMEOUT_SECONDS="5",
        NOTIFIER_SHUTDOWN_GRACE_SECONDS="0.5",
        NOTIFIER_LOG_LEVEL="WARNING",
    )


def _state(db: Path) -> tuple[Counter[str], int, set[str]]:
    """Statuses, messages still leased, and bodies with an ambiguous attempt."""
    with sqlite3.connect(db) as conn:
        statuses = Counter(s for (s,) in conn.execute("SELECT status FROM messages"))
        (leased,) = conn.execute(
            "SELECT count(*) FROM messages WHERE lease_owner IS NOT NULL"
        ).fetchone()
        ambiguous = {
            body
            for (body,) in conn.execute(
                "SELECT DISTINCT m.body FROM delivery_attempts a JOIN messages m"
                " ON m.id = a.message_id WHERE a.outcome = 'ambiguous'"
            )
        }
    return statuses, int(leased), ambiguous


async def _send_all(address: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = notifier_pb2_grpc.NotifierStub(channel)
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> str:
            async with sem:
                reply = await stub.SendMessage(
                    pb.SendMessageRequest(to="+14155550100", body=f"t{i:04d}")
                )
                return reply.message_id

        return await asyncio.gather(*(one(i) for i in range(TOTAL)))


@pytest.mark.slow
async def test_sigterm_under_load_finishes_or_releases_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "term.db"
    # Answers take 0.05 to 1.55 s: at the signal, 0.5 s of grace finishes some, not all.
    faults = Faults(seed=9, latency_seconds=0.05, latency_jitter_seconds=1.5)
    async with EmulatorServer(faults=faults) as emu:
        env = _env(db, emu)
        first = await asyncio.to_thread(start_server, env, "grpc")
        ids = await _send_all(first.address)
        assert len(set(ids)) == TOTAL
        deadline = time.monotonic() + 60
        while len(emu.state.accepted) < TOTAL // 5:
            assert time.monotonic() < deadline, "dispatch did not get going"
            await asyncio.sleep(0.02)
        first.proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(first.proc.communicate, timeout=30)
        assert first.proc.returncode == 0, out
        assert "Traceback" not in out
        statuses, leased, cut = await asyncio.to_thread(_state, db)
        assert sum(statuses.values()) == TOTAL  # every accepted message is stored
        assert leased == 0  # finished, recorded as ambiguous, or released: none left leased
        assert 0 < statuses["queued"] < TOTAL, "the signal did not land mid-dispatch"
        at_stop = statuses["queued"]

        emu.faults = Faults()
        second = await asyncio.to_thread(start_server, env, "grpc")
        try:
            deadline = time.monotonic() + 90
            while True:
                statuses, _, cut = await asyncio.to_thread(_state, db)
                if statuses["queued"] == TOTAL:
                    break
                assert time.monotonic() < deadline, f"not all sent: {statuses}"
                await asyncio.sleep(0.2)
        finally:
            assert await asyncio.to_thread(second.stop) == 0
        await asyncio.sleep(0.2)  # a request cut at the signal may still land at the emulator

    sent = Counter(m.body for m in emu.state.accepted)
    assert set(sent) == {f"t{i:04d}" for i in range(TOTAL)}  # nothing lost
    twice = {body for body, n in sent.items() if n > 1}
    assert twice <= cut  # only messages recorded as ambiguous went out twice
    assert max(sent.values()) <= 2
    print(
        f"\nSIGTERM with {at_stop} of {TOTAL} queued; {len(cut)} cut mid-request "
        f"(ambiguous); {len(twice)} reached Twilio twice"
    )
