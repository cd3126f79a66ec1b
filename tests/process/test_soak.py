"""A bounded soak: steady load through the whole loop while the server's memory and
open file descriptors are sampled; both must stay flat.

``notifier serve`` runs as its own process (gRPC server, dispatcher and webhook
sidecar); the Twilio emulator runs here, so the process measured is Notifier alone.
Messages go in over gRPC at a steady rate, the dispatcher sends them to the emulator,
and the emulator's signed status callbacks come back through the sidecar until every
message is read.

Rates: each message costs five durable commits (accept, attempt, three callbacks),
fsync'd (synchronous=FULL), from two writers (the gRPC server's and the sidecar's),
batched where they arrive together. The long run defaults to 80 messages/s, the
per-sender rate limit of SPEC §9 (and the default ``NOTIFIER_RATE_LIMIT_PER_SECOND``):
one sender cannot go faster. On a quiet 2-core machine 150 s at 80/s (12,000
messages, 240 callbacks/s) kept RSS within +0.9 MB and fds back at 23 once idle, with
every callback acknowledged. The short run in the suite stays at 25/s so it holds on a
busy CI machine too.

The short run is part of the normal suite. The long one is opt-in:
``NOTIFIER_SOAK=1`` (or ``make soak``); ``NOTIFIER_SOAK_SECONDS`` and
``NOTIFIER_SOAK_RATE`` change its length and rate.

Flat means, after a warm-up (the first quarter of the run, while caches, pools and
the allocator's arenas fill): the median RSS of the last third of the samples is
within ``RSS_SLACK_MB`` of the first third's; and once the backlog has drained, the
file descriptors still open are no more than the most open during the first third
(plus ``FD_SLACK``): connections come and go with the load, a leak stays.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.process import sending_env, start_server

RSS_SLACK_MB = 15.0
FD_SLACK = 8
SOAK = os.environ.get("NOTIFIER_SOAK") == "1"


@dataclass(frozen=True)
class Sample:
    t: float
    rss_mb: float
    fds: int
    accepted: int
    read: int


def _settled(emu: EmulatorServer) -> tuple[int, int]:
    """Messages whose last callback (read) the emulator has made, and how many of those
    the sidecar answered 2xx (the rest timed out or failed: Twilio gives up on them too)."""
    reads = {c.sid: c.ok for c in emu.state.callbacks if c.status == "read" and not c.dropped}
    return len(reads), sum(reads.values())


def _read_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("SELECT count(*) FROM messages WHERE status = 'read'").fetchone()
        return int(n)


async def _load(stub: notifier_pb2_grpc.NotifierAsyncStub, rate: float, seconds: float) -> int:
    """Send at ``rate`` per second for ``seconds``; return how many were accepted."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    inflight: set[asyncio.Future[pb.SendMessageResponse]] = set()
    issued = 0
    while (elapsed := loop.time() - start) < seconds:
        for _ in range(int(elapsed * rate) - issued):
            request = pb.SendMessageRequest(to="+14155550100", body=f"soak {issued}")
            task = asyncio.ensure_future(stub.SendMessage(request, timeout=30))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            issued += 1
        await asyncio.sleep(0.01)
    replies = await asyncio.gather(*inflight)
    assert all(r.message_id for r in replies)
    return issued


async def _sample(
    proc: psutil.Process, db: Path, emu: EmulatorServer, start: float, every: float
) -> list[Sample]:
    samples: list[Sample] = []
    try:
        while True:
            read = await asyncio.to_thread(_read_count, db)
            samples.append(
                Sample(
                    t=time.monotonic() - start,
                    rss_mb=proc.memory_info().rss / 2**20,
                    fds=proc.num_fds(),
                    accepted=len(emu.state.accepted),
                    read=read,
                )
            )
            await asyncio.sleep(every)
    except asyncio.CancelledError:
        return samples


def _print(samples: list[Sample], rate: float, seconds: float) -> None:
    print(f"\nsoak: {rate:.0f} messages/s for {seconds:.0f} s")
    print(f"{'t (s)':>7} {'RSS MB':>8} {'fds':>5} {'to Twilio':>10} {'read':>8}")
    for s in samples:
        print(f"{s.t:7.1f} {s.rss_mb:8.1f} {s.fds:5d} {s.accepted:10d} {s.read:8d}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seconds", "rate"),
    [
        pytest.param(20.0, 25.0, id="short"),
        pytest.param(
            float(os.environ.get("NOTIFIER_SOAK_SECONDS", "180")),
            float(os.environ.get("NOTIFIER_SOAK_RATE", "80")),
            id="long",
            marks=[
                pytest.mark.soak,
                pytest.mark.skipif(not SOAK, reason="opt-in: NOTIFIER_SOAK=1 or make soak"),
            ],
        ),
    ],
)
async def test_memory_and_fds_stay_flat_under_steady_load(
    tmp_path: Path, seconds: float, rate: float
) -> None:
    db = tmp_path / "soak.db"
    async with EmulatorServer() as emu:
        env = sending_env(db, emu, NOTIFIER_RATE_LIMIT_PER_SECOND=str(max(80.0, rate * 2)))
        server = await asyncio.to_thread(start_server, env)  # gRPC, dispatcher and sidecar
        proc = psutil.Process(server.proc.pid)
        start = time.monotonic()
        every = max(1.0, seconds / 40)
        sampler = asyncio.create_task(_sample(proc, db, emu, start, every))
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = notifier_pb2_grpc.NotifierStub(channel)
                total = await _load(stub, rate, seconds)
            deadline = time.monotonic() + 60 + seconds
            while len(emu.state.accepted) < total or _settled(emu)[0] < total:
                assert time.monotonic() < deadline, "the backlog did not drain"
                await asyncio.sleep(0.2)
            sampler.cancel()
            samples = await sampler
            _print(samples, rate, seconds)
            # At rest: the emulator gone (its keep-alive connections to the sidecar with
            # it), what does the server still hold open?
            await emu.stop()
            at_rest = []
            for _ in range(3):
                await asyncio.sleep(0.5)
                at_rest.append(proc.num_fds())
        finally:
            sampler.cancel()
            assert await asyncio.to_thread(server.stop) == 0

    # Each message went to Twilio exactly once, and every callback the sidecar
    # acknowledged is stored.
    assert len(emu.state.accepted) == total
    assert len({m.body for m in emu.state.accepted}) == total
    _, acknowledged = _settled(emu)
    assert await asyncio.to_thread(_read_count, db) == acknowledged
    # RSS: the samples taken while the load ran, after the warm-up quarter.
    steady = [s for s in samples if seconds / 4 <= s.t <= seconds]
    assert len(steady) >= 9, "too few samples to judge"
    third = len(steady) // 3
    first, last = steady[:third], steady[-third:]
    grew_mb = statistics.median(s.rss_mb for s in last) - statistics.median(s.rss_mb for s in first)
    # fds follow the connections a backlog of callbacks opens, so they are judged at
    # rest: after the drain, no more open than during the first third of the load.
    print(
        f"RSS median, last third vs first third: {grew_mb:+.1f} MB; fds at rest {at_rest} "
        f"(first third max {max(s.fds for s in first)}); callbacks the sidecar did not "
        f"acknowledge in time: {total - acknowledged} of {total}"
    )
    assert grew_mb <= RSS_SLACK_MB
    assert min(at_rest) <= max(s.fds for s in first) + FD_SLACK
