"""Prometheus metrics of the gRPC process (where the dispatcher runs).

One registry per server, so several servers in one process (tests) never share counts.
Served at ``/metrics`` on NOTIFIER_METRICS_ADDR. Names follow Prometheus conventions:
counters end in ``_total``, times are ``_seconds``. The outbox gauges come from a
sampler that reads the cached unsent count (``OutboxCapacity``) and one index lookup
at most once a second, so a scrape never reads the messages table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifier.asgi_server import InProcessServer
from notifier.domain.clock import Clock, now_ms
from notifier.domain.errors import StorageUnavailable

log = logging.getLogger(__name__)

# Twilio answers in tens to hundreds of milliseconds; timeouts are seconds.
_SEND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0)


class ServerMetrics:
    """Every metric the gRPC process exports, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "notifier_rpcs", "gRPC calls handled, by method and status code",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.rpc_seconds = Histogram(
            "notifier_rpc_duration_seconds", "Time to handle a gRPC call, by method",
            ["method"], registry=r,
        )  # fmt: skip
        self.sends = Counter(
            "notifier_twilio_sends", "Requests to Twilio to send a message, by outcome "
            "(accepted, transient, permanent, ambiguous, rate_limited)", ["outcome"], registry=r,
        )  # fmt: skip
        self.send_seconds = Histogram(
            "notifier_twilio_send_duration_seconds", "Time of a request to Twilio, by outcome",
            ["outcome"], buckets=_SEND_BUCKETS, registry=r,
        )  # fmt: skip
        self.twilio_errors = Counter(
            "notifier_twilio_errors", "Twilio error codes answered to sends, by code and outcome",
            ["code", "outcome"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "notifier_twilio_sends_in_flight", "Requests to Twilio not answered yet", registry=r
        )
        self.rate_wait = Histogram(
            "notifier_rate_limiter_wait_seconds", "Time a send waited for the sender's rate limit",
            buckets=_WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.claims = Counter(
            "notifier_outbox_claims", "Messages claimed (leased) by this dispatcher", registry=r
        )
        self.takeovers = Counter(
            "notifier_outbox_lease_takeovers",
            "Claims of a message whose earlier lease ran out without an outcome",
            registry=r,
        )
        self.quarantined = Counter(
            "notifier_outbox_quarantined",
            "Messages failed by the poison guard (claimed too often without an outcome)",
            registry=r,
        )
        self.outbox = Gauge(
            "notifier_outbox_messages", "Unsent messages (pending and scheduled), as last counted",
            registry=r,
        )  # fmt: skip
        self.oldest_pending = Gauge(
            "notifier_outbox_oldest_pending_age_seconds",
            "How long the longest-waiting due PENDING message has been due, as last sampled",
            registry=r,
        )
        self.storage_up = Gauge(
            "notifier_storage_up", "1 while storage serves (health SERVING), else 0", registry=r
        )

    # -- the dispatcher's hooks (dispatch.observer.DispatchObserver) ---------------------

    def claimed(self, count: int, takeovers: int) -> None:
        self.claims.inc(count)
        self.takeovers.inc(takeovers)

    def quarantine(self) -> None:
        self.quarantined.inc()

    def waited(self, seconds: float) -> None:
        self.rate_wait.observe(seconds)

    def send_started(self) -> None:
        self.in_flight.inc()

    def send_finished(self, outcome: str, code: int | None, seconds: float) -> None:
        self.in_flight.dec()
        self.sends.labels(outcome=outcome).inc()
        self.send_seconds.labels(outcome=outcome).observe(seconds)
        if code is not None:
            self.twilio_errors.labels(code=str(code), outcome=outcome).inc()


class OutboxSampler:
    """Sets the outbox gauges every ``interval`` seconds in the background: the unsent
    count from the capacity's cache, the oldest due message from one index lookup."""

    def __init__(
        self,
        metrics: ServerMetrics,
        unsent: Callable[[], Awaitable[int | None]],
        oldest_due_ms: Callable[[], Awaitable[int | None]],
        interval: float = 1.0,
        clock: Clock = now_ms,
    ) -> None:
        self._metrics = metrics
        self._unsent = unsent
        self._oldest_due_ms = oldest_due_ms
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        unsent = await self._unsent()
        if unsent is not None:
            self._metrics.outbox.set(unsent)
        oldest = await self._oldest_due_ms()
        age = 0.0 if oldest is None else max(0.0, (self._clock() - oldest) / 1000)
        self._metrics.oldest_pending.set(age)

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except StorageUnavailable as exc:  # keep the last values; health reports it
                log.debug("cannot sample the outbox: %s", exc)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def metrics_http(metrics: ServerMetrics, host: str, sock: socket.socket) -> InProcessServer:
    """``/metrics`` (Prometheus text) on the bound ``sock``, served in this event loop."""

    async def scrape(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return InProcessServer(Starlette(routes=[Route("/metrics", scrape)]), host, sock=sock)
