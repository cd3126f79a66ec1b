"""The Celery alternative: one task per message on the local Redis, sent with the SDK.

What many teams would build instead of Notifier: ``send_message.delay(...)`` in the
request, a worker pool calling ``client.messages.create`` with Celery's retry. The
benchmark starts a worker (``celery -A bench.celery_app worker``) with the emulator's
URL and its own queue in the environment; each finished task counts itself in Redis.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery
from twilio.base.exceptions import TwilioRestException

BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench-notifier")
DONE_KEY = f"{QUEUE}:done"

app = Celery("bench", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=False,  # Celery's default: a task is acked when a worker takes it
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_local = threading.local()
_redis: Any = None


def _twilio() -> Any:
    """One client per worker thread: a shared one's HTTP pool (10 connections) would
    make the other threads open a new connection for every request."""
    client = getattr(_local, "client", None)
    if client is None:
        from twilio.rest import Client

        from notifier.emulator import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN

        client = Client(DEV_ACCOUNT_SID, DEV_AUTH_TOKEN)
        client.api.base_url = os.environ["BENCH_TWILIO_URL"]
        _local.client = client
    return client


def _done() -> Any:
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(BROKER)
    return _redis


@app.task(bind=True, max_retries=5, default_retry_delay=1)  # type: ignore[untyped-decorator]
def send_message(self: Any, index: int) -> str:
    from notifier.emulator import DEV_FROM

    try:
        created = _twilio().messages.create(
            to=f"whatsapp:+1415555{index % 10000:04d}",
            from_=DEV_FROM,
            content_sid="HX" + "ab" * 16,
            content_variables=f'{{"1": "customer {index}"}}',
        )
    except TwilioRestException as exc:
        if exc.status == 429 or exc.status >= 500:
            raise self.retry(exc=exc) from None
        raise
    _done().incr(DONE_KEY)
    return str(created.sid)
