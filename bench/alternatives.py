"""What a team would otherwise build, on the same workload, sending to the same emulator.

(a) Direct ``twilio`` SDK calls with a retry loop in the request path: nothing stored.
(b) A Celery task per message on the local Redis, a worker calling the SDK.

Both are measured for throughput; neither has Notifier's guarantees, which the notes
say in one line each (what a kill -9 loses, what a retry may duplicate).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import redis
from twilio.base.exceptions import TwilioRestException

from bench.common import Figure, Stopwatch, emulator_process, scale, spawn
from bench.dispatch import CONCURRENCY, sdk_client, sdk_send

CELERY_THREADS = 32


async def _sdk_with_retries(url: str, total: int) -> float:
    """The inline pattern: up to 3 tries with backoff on 429/5xx, 32 requests at a time."""
    client, http = sdk_client(url)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            i = next_index
            next_index += 1
            for attempt in range(3):
                try:
                    await sdk_send(client, i)
                    break
                except TwilioRestException as exc:
                    if exc.status != 429 and exc.status < 500:
                        break
                    await asyncio.sleep(0.1 * 2**attempt)

    try:
        with Stopwatch() as clock:
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        await http.close()
    return total / clock.seconds


def _enqueue(total: int) -> float:
    from bench.celery_app import send_message

    with Stopwatch() as clock:
        for i in range(total):
            send_message.delay(i)
    return total / clock.seconds


async def _celery(url: str, total: int) -> tuple[float, float]:
    queue = f"bench-notifier-{uuid.uuid4().hex[:8]}"
    env = {"BENCH_CELERY_QUEUE": queue, "BENCH_TWILIO_URL": url}
    os.environ.update(env)  # the enqueuing side (bench.celery_app) reads it on import
    import bench.celery_app as celery_app

    celery_app.QUEUE = queue
    celery_app.DONE_KEY = f"{queue}:done"
    celery_app.app.conf.task_default_queue = queue
    done = redis.Redis.from_url(celery_app.BROKER)
    done.delete(celery_app.DONE_KEY)
    worker = await spawn(
        "-m",
        "celery",
        "-A",
        "bench.celery_app",
        "worker",
        "--pool=threads",
        f"--concurrency={CELERY_THREADS}",
        "--loglevel=WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        env=env,
        quiet=True,
    )
    try:
        # Warm up: the worker is ready once it has done one task.
        await asyncio.to_thread(_enqueue, 1)
        deadline = time.monotonic() + 60
        while int(done.get(celery_app.DONE_KEY) or 0) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not start")
            await asyncio.sleep(0.05)
        began = time.perf_counter()
        enqueue_rate = await asyncio.to_thread(_enqueue, total)
        while int(done.get(celery_app.DONE_KEY) or 0) < total + 1:
            if time.perf_counter() - began > 600:
                raise RuntimeError("the Celery worker did not finish")
            await asyncio.sleep(0.05)
        completion_rate = total / (time.perf_counter() - began)
    finally:
        await worker.stop()
        done.delete(celery_app.DONE_KEY, queue)
        done.close()
    return enqueue_rate, completion_rate


async def run() -> list[Figure]:
    total = scale(10_000, 200)
    async with emulator_process() as url:
        direct = await _sdk_with_retries(url, total)
    async with emulator_process() as url:
        enqueue, completion = await _celery(url, total)
    return [
        Figure(
            name="(a) direct twilio SDK + retry loop, no storage: sent",
            value=direct,
            unit="/s",
            ceiling=None,
            ceiling_name="",
            target="-",
            met=None,
            note=(
                f"{CONCURRENCY} at a time; messages lost on kill -9: all in flight/unsent; "
                "a retry after a timeout or 5xx may send twice; no status tracking"
            ),
        ),
        Figure(
            name="(b) Celery task per message (Redis): enqueued",
            value=enqueue,
            unit="/s",
            ceiling=None,
            ceiling_name="",
            target="-",
            met=None,
            note="task.delay() one by one from one client; Redis without fsync (appendonly no)",
        ),
        Figure(
            name="(b) Celery task per message (Redis): sent end to end",
            value=completion,
            unit="/s",
            ceiling=None,
            ceiling_name="",
            target="-",
            met=None,
            note=(
                f"worker --pool=threads -c {CELERY_THREADS}, sync SDK; from the first "
                "enqueue to the last send; acked on receipt: a killed worker loses its "
                "prefetched tasks, and Redis here keeps nothing on disk"
            ),
        ),
    ]
