"""Counts and times every gRPC call, by method and status code, for Prometheus.

Outermost of the interceptors, so calls refused by authentication and every status
the error interceptor maps are counted with the code the caller saw.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from notifier.api.handlers import WrappingInterceptor
from notifier.metrics import ServerMetrics

Handler = Any


def _code(context: grpc.aio.ServicerContext[Any, Any], failed: bool | str) -> str:
    """The status the call ended with: set by an abort, else OK, or ``failed`` (the
    name to use) when the handler raised without one."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions keep the raw number
        return grpc.StatusCode(code).name if code in range(17) else str(code)
    if isinstance(failed, str):
        return failed
    return "UNKNOWN" if failed else "OK"


class MetricsInterceptor(WrappingInterceptor):
    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self._metrics = metrics
        # The labelled children, looked up once per method (and code): ``labels()``
        # builds and checks its label tuple under a lock on every call, about 3/4 of
        # what counting and timing a call cost. Bounded by methods x codes.
        self._counted: dict[tuple[str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    def _done(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        began: float,
        failed: bool | str,
    ) -> None:
        code = _code(context, failed)
        counted = self._counted.get((method, code))
        if counted is None:
            counted = self._metrics.rpcs.labels(method=method, code=code)
            self._counted[(method, code)] = counted
        timed = self._timed.get(method)
        if timed is None:
            timed = self._timed[method] = self._metrics.rpc_seconds.labels(method=method)
        counted.inc()
        timed.observe(time.monotonic() - began)

    def wrap_unary(self, behavior: Handler, method: str) -> Handler:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            began = time.monotonic()
            failed: bool | str = True
            try:
                result = await behavior(request, context)
                failed = False
                return result
            except asyncio.CancelledError:
                failed = "CANCELLED"  # the caller went away or its deadline passed
                raise
            finally:
                self._done(method, context, began, failed)

        return wrapper

    def wrap_stream(self, behavior: Handler, method: str) -> Handler:
        async def wrapper(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            began = time.monotonic()
            failed: bool | str = True
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    await result
                else:
                    async for response in result:
                        yield response
                failed = False
            except (asyncio.CancelledError, GeneratorExit):
                failed = "CANCELLED"
                raise
            finally:
                self._done(method, context, began, failed)

        return wrapper
