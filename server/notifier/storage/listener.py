"""PostgreSQL LISTEN on a connection of its own, turned into wake-up calls.

The repository NOTIFYs in the same transaction that makes messages due or stores status
events, so a listener learns of them when they commit, in any process. The callbacks
are only hints ("look now"): whoever is woken reads the database as it would after a
poll, so a lost notification costs latency (until the caller's slow fallback poll),
never correctness. That is also why a reconnect wakes everyone once: whatever was
notified while the connection was down is picked up by that look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

log = logging.getLogger(__name__)

_KEEPALIVE_SECONDS = 10.0
_RETRY_MIN_SECONDS = 0.2
_RETRY_MAX_SECONDS = 5.0


class Listener:
    """One asyncpg connection LISTENing on some channels, reconnecting when it is lost."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.connections = 0
        """Connections made so far (a reconnect counts): for tests and logs."""

    def subscribe(self, channel: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` on each notification on ``channel`` (subscribe before start)."""
        self._callbacks.setdefault(channel, []).append(callback)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listener")

    async def wait_connected(self) -> None:
        """Return once LISTEN is in place (callers bound it with a timeout)."""
        await self._connected.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _wake_all(self) -> None:
        for callbacks in self._callbacks.values():
            for callback in callbacks:
                callback()

    def _on_notification(self, _conn: object, _pid: int, channel: str, _payload: object) -> None:
        for callback in self._callbacks.get(channel, ()):
            callback()

    async def _run(self) -> None:
        pause = _RETRY_MIN_SECONDS
        while True:
            before = self.connections
            try:
                await self._listen()
                error: BaseException | None = None
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                error = exc
            # A connection that was up and then died, however it died, is retried soon;
            # only failures to connect back off (else a loss after an outage waited 5 s).
            if self.connections > before:
                pause = _RETRY_MIN_SECONDS
            if error is not None:
                log.warning("LISTEN connection lost, reconnecting in %.1fs: %s", pause, error)
            self._connected.clear()
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RETRY_MAX_SECONDS)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        try:
            for channel in self._callbacks:
                await conn.add_listener(channel, self._on_notification)
            self.connections += 1
            self._connected.set()
            # Anything notified while we were not listening: look once now.
            self._wake_all()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), _KEEPALIVE_SECONDS)
                    break
                # An idle connection may be dead without us knowing (no FIN seen).
                await conn.execute("SELECT 1", timeout=5)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            if not conn.is_closed():
                conn.terminate()
