"""grpc.health.v1 status that follows storage: NOT_SERVING while it cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from grpc_health.v1 import health, health_pb2

from notifier.domain.errors import StorageUnavailable
from notifier.domain.ports import StorageProbe
from notifier.telemetry import untraced

log = logging.getLogger(__name__)

SERVICE = "notifier.v1.Notifier"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StorageHealth:
    """Pings storage every ``interval`` seconds and publishes the result."""

    def __init__(self, store: StorageProbe, interval: float) -> None:
        self.servicer = health.aio.HealthServicer()
        self._store = store
        self._interval = interval
        self._serving: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    async def _publish(self, serving: bool) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        status = SERVING if serving else NOT_SERVING
        for name in ("", SERVICE):
            await self.servicer.set(name, status)
        if serving:
            log.info("storage reachable: SERVING")
        else:
            log.warning("storage unreachable: NOT_SERVING")

    async def check(self) -> bool:
        try:
            await self._store.ping()
        except StorageUnavailable as exc:
            log.debug("storage ping failed: %s", exc)
            await self._publish(False)
            return False
        await self._publish(True)
        return True

    async def report_down(self) -> None:
        """Called when a request met unreachable storage: say so now, recheck soon."""
        await self._publish(False)
        self._wake.set()

    def start(self) -> None:
        with untraced():  # a ping a second is no trace anyone wants to read
            self._task = asyncio.create_task(self._run(), name="storage-health")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.check()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.servicer.enter_graceful_shutdown()
