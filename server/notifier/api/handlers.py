"""A gRPC method handler rebuilt around new behaviour, keeping its kind and its codec.

Server interceptors that replace or wrap what a method does (authentication refusing it,
errors mapped to statuses) need a handler of the same kind (unary or streaming request
and response) as the one they got; this is the one place that tells the kinds apart.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]
Wrap = Callable[[Handler], Handler]
Deserializer = Callable[[bytes], Any] | None


def same_kind(
    handler: Any, unary: Wrap, stream: Wrap, **codec: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s kind whose behaviour is ``unary(behaviour)`` for a unary
    response and ``stream(behaviour)`` for a streamed one; ``codec`` names its
    ``request_deserializer`` and ``response_serializer``."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **codec)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **codec)


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that only swaps the handler of a method this server has."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:  # not a method of this server: gRPC answers UNIMPLEMENTED
            return handler
        return self.handler_for(handler, handler_call_details)

    @abc.abstractmethod
    def handler_for(self, handler: Any, call: grpc.HandlerCallDetails) -> Any:
        """The handler to serve the call with: ``handler`` itself, or one built on it."""


class WrappingInterceptor(HandlerInterceptor):
    """An interceptor that wraps what every method does, knowing the method's name: a
    unary-response behaviour through ``wrap_unary``, a streamed one through
    ``wrap_stream``; ``deserializer`` may replace how requests are read.

    The wrapped handler depends only on the handler and the method, and the server
    hands the same handler object for every call of a method: the last one built per
    method is kept and reused while that holds (building it was a few percent of a
    SendMessage's CPU). A handler built per call (authentication's refusal) is
    wrapped afresh, as before; one entry per method bounds the memory.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, wrapped)

    def handler_for(self, handler: Any, call: grpc.HandlerCallDetails) -> Any:
        method = call.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        return same_kind(
            handler,
            lambda behavior: self.wrap_unary(behavior, method),
            lambda behavior: self.wrap_stream(behavior, method),
            request_deserializer=self.deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def deserializer(self, original: Deserializer) -> Deserializer:
        return original

    @abc.abstractmethod
    def wrap_unary(self, behavior: Handler, method: str) -> Handler:
        """``behavior`` (one response) wrapped."""

    @abc.abstractmethod
    def wrap_stream(self, behavior: Handler, method: str) -> Handler:
        """``behavior`` (a stream of responses) wrapped."""
