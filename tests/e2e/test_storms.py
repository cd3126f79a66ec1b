"""Emulator storms through the real path: gRPC -> outbox -> dispatcher -> emulator ->
signed callbacks -> sidecar. Whatever Twilio does wrong, every message ends in a
terminal state that matches what happened to it, none is lost or stuck, none is sent
more often than the attempts allow, and a message Twilio took twice has an ambiguous
attempt on record to say why.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import duration_pb2

from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier.server import create_sidecar
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.engine import Engine, engine_settings, start_engine

TOTAL = 30
MAX_ATTEMPTS = 4
TERMINAL = {"read", "failed", "expired"}
RETRIED_CODES = {20429, 20500, 20503, 30500, 0}  # 0: no answer (timeout)

STORMS: dict[str, tuple[Faults, dict[str, Any]]] = {
    "half 500/503": (
        Faults(seed=1, error_rates={20500: 0.25, 20503: 0.25}, record_on_error=True),
        {},
    ),
    "429 bursts": (
        Faults(seed=2, rate_limit_fraction=0.5, rate_limit_burst=8, retry_after_seconds=0.2),
        {},
    ),
    "slow": (
        Faults(seed=3, latency_seconds=0.2, latency_jitter_seconds=0.3),
        {"NOTIFIER_TWILIO_TIMEOUT_SECONDS": 1.0},
    ),
    "hangs past the timeout": (
        Faults(seed=4, hang_fraction=0.3),
        {"NOTIFIER_TWILIO_TIMEOUT_SECONDS": 0.3},
    ),
    "everything at once": (
        Faults(
            seed=5,
            error_rates={20500: 0.1, 20503: 0.1, 30500: 0.05},
            rate_limit_fraction=0.15,
            retry_after_seconds=0.1,
            hang_fraction=0.1,
            record_on_error=True,
            latency_jitter_seconds=0.1,
            duplicate_callback_fraction=0.2,
            reorder_callbacks=True,
        ),
        {"NOTIFIER_TWILIO_TIMEOUT_SECONDS": 0.3},
    ),
}


def _statuses(db_path: Path) -> dict[str, str]:
    with sqlite3.connect(db_path) as conn:
        return dict(conn.execute("SELECT id, status FROM messages"))


@pytest.mark.slow
@pytest.mark.parametrize("storm", sorted(STORMS))
async def test_every_message_ends_in_its_right_state(
    db_path: Path, emulator: EmulatorServer, storm: str
) -> None:
    faults, env = STORMS[storm]
    settings = engine_settings(
        db_path,
        emulator,
        STATUS_CALLBACK_URL=None,
        NOTIFIER_HTTP_ADDR="127.0.0.1:0",
        NOTIFIER_RETRY_MAX_ATTEMPTS=MAX_ATTEMPTS,
        **env,
    )
    sidecar, settings = await create_sidecar(settings)
    await sidecar.start()
    server, channel = await start_engine(settings)
    engine = Engine(server, channel)
    emulator.faults = faults
    try:
        # A few carry a short validity: under a storm some of them may run out of it.
        short = duration_pb2.Duration(seconds=1)
        ids = {
            await engine.send(
                to=f"+1415555{i:04d}",
                body=f"storm-{i}",
                **({"validity": short} if i % 8 == 0 else {}),
            ): f"storm-{i}"
            for i in range(TOTAL)
        }
        deadline = time.monotonic() + 60
        while True:
            statuses = await asyncio.to_thread(_statuses, db_path)
            if set(statuses.values()) <= TERMINAL:
                break
            assert time.monotonic() < deadline, f"stuck: {Counter(statuses.values())}"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # late callbacks, if any, must not change the verdicts
        replies = {mid: await engine.status(mid) for mid in ids}
    finally:
        await channel.close()
        await server.stop(grace=1)
        await sidecar.stop()

    assert set(statuses) == set(ids)  # nothing lost, nothing extra
    requests = Counter(r.param("Body") for r in emulator.state.requests)
    taken = Counter(m.body for m in emulator.state.accepted)
    verdicts: Counter[str] = Counter()
    for mid, body in ids.items():
        got = replies[mid]
        message, attempts = got.message, list(got.attempts)
        outcomes = [a.outcome for a in attempts]
        status = pb.MessageStatus.Name(message.status)
        verdicts[status] += 1
        # Past MAX_ATTEMPTS only a message with a validity goes again, and only after a
        # 429: Twilio said "later", so it is retried until its validity ends
        # (domain/retry.py). A 1 s validity holds five 429s 0.2 s apart.
        for extra in range(MAX_ATTEMPTS, len(outcomes)):
            assert message.HasField("expires_at"), (body, outcomes)
            assert outcomes[extra - 1] == "rate_limited", (body, outcomes)
        # One request per recorded attempt: no SDK retries, no unrecorded sends.
        assert requests[body] == len(attempts), (body, outcomes)
        if taken[body] > 1:
            assert "ambiguous" in outcomes, (body, outcomes)
        if message.status == pb.MESSAGE_STATUS_READ:
            assert taken[body] >= 1
        elif message.status == pb.MESSAGE_STATUS_FAILED:
            # Gave up after every attempt, each a retryable failure, with the last one's code.
            if message.HasField("expires_at"):
                assert len(attempts) >= MAX_ATTEMPTS, (body, outcomes)
            else:
                assert len(attempts) == MAX_ATTEMPTS, (body, outcomes)
            assert "accepted" not in outcomes
            assert message.error_code == attempts[-1].error_code
            assert message.error_code in RETRIED_CODES
            assert message.timestamps.HasField("failed")
        else:
            assert message.status == pb.MESSAGE_STATUS_EXPIRED, (body, status)
            assert message.HasField("expires_at")
            assert "accepted" not in outcomes
            for a in attempts:
                assert a.started_at.ToMilliseconds() < message.expires_at.ToMilliseconds()
    sends, took = sum(requests.values()), sum(taken.values())
    print(f"\n{storm}: {dict(verdicts)}; requests {sends}, taken {took}")
    if storm == "slow":
        assert verdicts == Counter({"MESSAGE_STATUS_READ": TOTAL})
        assert max(requests.values()) == 1
