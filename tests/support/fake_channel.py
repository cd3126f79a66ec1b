"""grpc_testing's fake channel, shaped so the async client (and so the sync facade) can use it.

``grpc_testing.channel`` fakes the *synchronous* grpc.Channel; NotifierClient awaits
grpc.aio calls. ``AioOverTesting`` is the thin seam between them: each unary-unary call
runs the client's interceptors (as grpc.aio would: first in the list outermost), then
makes the same call on the grpc_testing channel from a worker thread, and turns the
grpc.RpcError it raises into the grpc.aio.AioRpcError that grpc.aio would raise. The test
plays the server with ``take_unary_unary`` / ``terminate``.

grpc_testing drops the call's timeout (its ChannelRpc has no ``time_remaining``), so the
deadline each call handed to the channel is kept in ``timeouts`` instead.

``patch_channels`` swaps ``grpc.aio.insecure_channel`` so that a client built the normal
way (``SyncNotifierClient(address, token=...)``) gets this channel, together with the
options (service config) and interceptors (bearer token) that create_channel chose.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc_testing
import pytest
from google.protobuf import any_pb2, message
from google.rpc import status_pb2

from notifier_client.sync import SyncNotifierClient
from notifier_proto.v1 import notifier_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Notifier"]
WAIT = 10.0  # seconds a test waits for the client to call or answer before failing
T = TypeVar("T")

_Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]]


def method(name: str) -> Any:
    """The MethodDescriptor of a Notifier RPC, for ``take_unary_unary``."""
    return SERVICE.methods_by_name[name]


class _UnaryUnary:
    def __init__(self, channel: AioOverTesting, name: str, call: Any) -> None:
        self._channel, self._name, self._call = channel, name, call

    def __call__(
        self, request: Any, *, timeout: float | None = None, metadata: Any = None, **_: Any
    ) -> Awaitable[Any]:
        details = grpc.aio.ClientCallDetails(self._name, timeout, metadata, None, None)
        call: _Continuation = self._invoke
        for interceptor in reversed(self._channel.interceptors):
            if isinstance(interceptor, grpc.aio.UnaryUnaryClientInterceptor):
                call = _chain(interceptor, call)
        return call(details, request)

    async def _invoke(self, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        self._channel.timeouts.append(details.timeout)
        metadata = tuple(details.metadata or ())
        try:
            return await asyncio.to_thread(
                self._call, request, timeout=details.timeout, metadata=metadata
            )
        except grpc.RpcError as err:
            call: Any = err  # grpc_testing's error is also its grpc.Call
            raise grpc.aio.AioRpcError(
                call.code(),
                grpc.aio.Metadata(*(call.initial_metadata() or ())),
                grpc.aio.Metadata(*(call.trailing_metadata() or ())),
                call.details(),
            ) from None


def _chain(
    interceptor: grpc.aio.UnaryUnaryClientInterceptor, inner: _Continuation
) -> _Continuation:
    async def call(details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await interceptor.intercept_unary_unary(inner, details, request)

    return call


class _NotFaked:
    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{self._name}: only unary-unary calls are faked here")


class AioOverTesting:
    """A grpc.aio.Channel look-alike over ``grpc_testing.channel`` (unary-unary calls)."""

    def __init__(
        self,
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.testing = grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())
        self.interceptors = list(interceptors)
        self.options = dict(options)
        self.timeouts: list[float | None] = []
        self.closed = 0

    def unary_unary(self, name: str, *args: Any, **kwargs: Any) -> _UnaryUnary:
        kwargs.pop("_registered_method", None)
        return _UnaryUnary(self, name, self.testing.unary_unary(name, *args, **kwargs))

    def unary_stream(self, name: str, *args: Any, **kwargs: Any) -> _NotFaked:
        return _NotFaked(name)

    stream_unary = stream_stream = unary_stream

    async def close(self, grace: float | None = None) -> None:
        self.closed += 1

    def take(self, name: str) -> tuple[dict[str, str], Any, Any]:
        """The next call of RPC ``name``: (invocation metadata as a dict, request, rpc).

        Fails the test, instead of hanging, when the client makes no such call."""
        found: queue.Queue[tuple[Any, Any, Any]] = queue.Queue()
        threading.Thread(
            target=lambda: found.put(self.testing.take_unary_unary(method(name))), daemon=True
        ).start()
        try:
            metadata, request, rpc = found.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"the client made no {name} call")
        return dict(metadata or ()), request, rpc


@contextmanager
def patch_channels(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[AioOverTesting]]:
    """Every grpc.aio.insecure_channel made inside becomes an AioOverTesting (listed)."""
    made: list[AioOverTesting] = []

    def insecure_channel(
        target: str, options: Sequence[tuple[str, Any]] = (), interceptors: Any = None, **_: Any
    ) -> AioOverTesting:
        made.append(AioOverTesting(interceptors or (), options or ()))
        return made[-1]

    with monkeypatch.context() as patch:
        patch.setattr(grpc.aio, "insecure_channel", insecure_channel)
        yield made


def in_thread(call: Callable[[], T]) -> Future[T]:
    """Run a blocking client call on a daemon thread; the test plays the server meanwhile."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def status_trailers(
    code: grpc.StatusCode, text: str, *details: message.Message
) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a google.rpc.Status with ``details``, as the server sends."""
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = status_pb2.Status(code=code.value[0], message=text, details=packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


@dataclass
class Exchange:
    """One call as the fake server saw it, and what the client made of the answer."""

    metadata: dict[str, str]
    request: Any
    timeout: float | None
    outcome: Future[Any]

    def result(self) -> Any:
        return self.outcome.result(timeout=WAIT)


def exchange(
    channel: AioOverTesting,
    name: str,
    call: Callable[[], Any],
    response: message.Message | None = None,
    *,
    code: grpc.StatusCode = grpc.StatusCode.OK,
    details: str = "",
    trailers: Sequence[tuple[str, str | bytes]] = (),
) -> Exchange:
    """Make ``call`` on a thread, take its ``name`` RPC, answer it, wait for the client."""
    if response is None and code is grpc.StatusCode.OK:
        response = getattr(pb, method(name).output_type.name)()
    outcome = in_thread(call)
    metadata, request, rpc = channel.take(name)
    rpc.terminate(response, tuple(trailers), code, details)
    outcome.exception(timeout=WAIT)  # the client is done with the answer
    return Exchange(metadata, request, channel.timeouts[-1], outcome)


Connect = Callable[..., tuple[SyncNotifierClient, AioOverTesting]]


@contextmanager
def connecting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Connect]:
    """``connect(**kwargs)``: a SyncNotifierClient to 127.0.0.1:50051 built the normal way,
    on a fake channel; every client made is closed at the end."""
    clients: list[SyncNotifierClient] = []

    def connect(
        address: str = "127.0.0.1:50051", **kwargs: Any
    ) -> tuple[SyncNotifierClient, AioOverTesting]:
        with patch_channels(monkeypatch) as made:
            clients.append(SyncNotifierClient(address, **kwargs))
        (channel,) = made
        return clients[-1], channel

    try:
        yield connect
    finally:
        for client in clients:
            client.close()
