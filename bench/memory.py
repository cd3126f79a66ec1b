"""Resident memory of the gRPC server process with 1,000,000 messages queued.

The queue is written straight into the SQLite file (bulk SQL: setup, not measured),
then ``notifier serve grpc`` starts in its own process with a dispatcher that cannot
drain it (1 message a second to the emulator). After it has been claiming and serving
SendMessage calls for a few seconds, its RSS is sampled; the peak is reported.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import grpc
import psutil

from bench.common import (
    Figure,
    Stopwatch,
    create_schema,
    emulator_env,
    emulator_process,
    fill_outbox,
    scale,
    spawn,
)
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc

TARGET_MB = 250


async def _serve_some(address: str, calls: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = notifier_pb2_grpc.NotifierStub(channel)
        for i in range(calls):
            reply = await stub.SendMessage(
                pb.SendMessageRequest(to=f"+1415666{i:04d}", body=f"memory check {i}")
            )
            await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id=reply.message_id))


async def run() -> Figure:
    queued = scale(1_000_000, 5_000)
    watch_seconds = scale(5, 1)
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "memory.db"
        await create_schema(db_path)
        with Stopwatch() as fill:
            await asyncio.to_thread(fill_outbox, db_path, queued)
        async with emulator_process() as url:
            env = {k: str(v) for k, v in emulator_env(url).items()} | {
                "NOTIFIER_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
                "NOTIFIER_GRPC_ADDR": "127.0.0.1:0",
                "NOTIFIER_RATE_LIMIT_PER_SECOND": "1",
                "NOTIFIER_METRICS_ADDR": "127.0.0.1:0",
                # Room for the SendMessage calls made on top of the queued million (the
                # default capacity is exactly 1,000,000 and would refuse them).
                "NOTIFIER_OUTBOX_CAPACITY": str(queued + 10_000),
                "NOTIFIER_LOG_LEVEL": "WARNING",
                # Nobody listens there: the emulator's callbacks must not reach whatever
                # runs on the development default port.
                "STATUS_CALLBACK_URL": "http://127.0.0.1:9/api/v1/whatsapp/status",
                "WEBHOOK_URL": "http://127.0.0.1:9/api/v1/whatsapp/webhook",
            }
            child = await spawn("-m", "notifier", "serve", "grpc", env=env)
            try:
                found = await child.line_matching(r"gRPC serving on (\S+)")
                process = psutil.Process(child.pid)
                at_start = process.memory_info().rss
                peak = at_start
                await _serve_some(found.group(1), scale(200, 20))
                for _ in range(int(watch_seconds / 0.2)):
                    peak = max(peak, process.memory_info().rss)
                    await asyncio.sleep(0.2)
                peak = max(peak, process.memory_info().rss)
            finally:
                await child.stop()
    mb = peak / 2**20
    return Figure(
        name=f"Resident memory, gRPC server, {queued:,} messages queued",
        value=mb,
        unit="MB",
        ceiling=None,
        ceiling_name="",
        target=f"<= {TARGET_MB} MB",
        met=mb <= TARGET_MB,
        note=(
            f"peak RSS over {watch_seconds} s of claiming (limit 1/s) and serving; "
            f"{at_start / 2**20:.0f} MB just after start; queue written in {fill.seconds:.0f} s"
        ),
    )
