"""A blocking facade over NotifierClient, for scripts and code without an event loop.

It runs the async client on a private event loop instead of reimplementing anything, so
deadlines, retries, auth and typed errors are exactly the async client's. Not for use
inside a running event loop (use NotifierClient there).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from notifier_client.client import NotifierClient

P = ParamSpec("P")
R = TypeVar("R")


def _blocking(
    method: Callable[Concatenate[NotifierClient, P], Awaitable[R]],
) -> Callable[Concatenate[SyncNotifierClient, P], R]:
    def call(self: SyncNotifierClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._loop.run_until_complete(method(self.aio, *args, **kwargs))

    call.__doc__ = method.__doc__
    return call


def _iterating(
    method: Callable[Concatenate[NotifierClient, P], AsyncIterator[R]],
) -> Callable[Concatenate[SyncNotifierClient, P], Iterator[R]]:
    def call(self: SyncNotifierClient, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        items = method(self.aio, *args, **kwargs)
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(anext(items))
                except StopAsyncIteration:
                    return
        finally:  # stopping early cancels the stream, as leaving an async for does
            close = getattr(items, "aclose", None)
            if close is not None:
                self._loop.run_until_complete(close())

    call.__doc__ = method.__doc__
    return call


class SyncNotifierClient:
    """``with SyncNotifierClient("127.0.0.1:50051") as c: c.send(...)``; same arguments
    and methods as NotifierClient, blocking, with iterators for bulk, watch, list_all."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self.aio = self._loop.run_until_complete(self._create(args, kwargs))

    @staticmethod
    async def _create(args: tuple[Any, ...], kwargs: dict[str, Any]) -> NotifierClient:
        return NotifierClient(*args, **kwargs)  # the channel binds to the running loop

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.aio.close())
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    send = _blocking(NotifierClient.send)
    notify_order = _blocking(NotifierClient.notify_order)
    notify_admins = _blocking(NotifierClient.notify_admins)
    status = _blocking(NotifierClient.status)
    metrics = _blocking(NotifierClient.metrics)
    list = _blocking(NotifierClient.list)
    retry = _blocking(NotifierClient.retry)
    cancel = _blocking(NotifierClient.cancel)
    erase_recipient = _blocking(NotifierClient.erase_recipient)
    bulk = _iterating(NotifierClient.bulk)
    watch = _iterating(NotifierClient.watch)
    list_all = _iterating(NotifierClient.list_all)
