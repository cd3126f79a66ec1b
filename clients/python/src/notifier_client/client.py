"""NotifierClient: one typed async method per RPC, with deadlines and typed errors.

Replies are the generated protobuf messages themselves (fully typed by their .pyi):
wrapping them in look-alike classes would double the surface and lag the proto. The
client's job is the rest: building requests from plain Python values, deadlines,
retries, auth, and turning failures into ``NotifierError`` subclasses.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import grpc

from notifier_client.channel import RetryPolicy, TlsConfig, create_channel
from notifier_client.errors import from_rpc_error
from notifier_client.types import duration, is_final, parse_channel, timestamp
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub

DEFAULT_ADDRESS = "127.0.0.1:50051"
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
AdminNotification = (
    pb.BookingNotification
    | pb.LowStockNotification
    | pb.EventCapacityNotification
    | pb.CustomNotification
)
_ADMIN_FIELDS: dict[type[Any], str] = {
    pb.BookingNotification: "booking",
    pb.LowStockNotification: "low_stock",
    pb.EventCapacityNotification: "event_capacity",
    pb.CustomNotification: "custom",
}


class _Default(Enum):
    DEADLINE = 0


DEFAULT = _Default.DEADLINE
"""Use the client's default deadline for this kind of call (``timeout=None``: none)."""
Timeout = float | None | _Default


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Default deadlines in seconds; None means no deadline.

    Unary calls answer from the database, so a few seconds is generous; a send that waits
    for Twilio's answer needs room for Twilio's own timeout. Streams run as long as
    there is work (bulk) or interest (watch), so they get none by default.
    """

    unary: float | None = 10.0
    send_and_wait: float | None = 40.0
    bulk: float | None = None
    watch: float | None = None


DEFAULT_DEADLINES = Deadlines()
DEFAULT_RETRY = RetryPolicy()


class NotifierClient:
    """Async client for notifier.v1.Notifier. Use as ``async with NotifierClient() as c``.

    ``retry_sends`` (default on) gives every send without an idempotency key a generated
    one, which is what makes SendMessage safe to retry on UNAVAILABLE (see channel.py).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        tls: TlsConfig | None = None,
        deadlines: Deadlines = DEFAULT_DEADLINES,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        retry_sends: bool = True,
        allow_plaintext_token: bool = False,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.address = address
        self.deadlines = deadlines
        self.retry_sends = retry_sends
        self._owns_channel = channel is None
        self._channel = channel or create_channel(
            address,
            token=token,
            tls=tls,
            retry=retry,
            retry_sends=retry_sends,
            allow_plaintext_token=allow_plaintext_token,
            options=options,
        )
        self.stub: NotifierAsyncStub = notifier_pb2_grpc.NotifierStub(self._channel)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Self:
        """Address from NOTIFIER_GRPC_ADDR, token from NOTIFIER_TOKEN (kwargs win)."""
        kwargs.setdefault("token", os.environ.get("NOTIFIER_TOKEN") or None)
        address = kwargs.pop("address", None) or os.environ.get("NOTIFIER_GRPC_ADDR")
        return cls(address or DEFAULT_ADDRESS, **kwargs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel if this client made it (a channel passed in is the caller's)."""
        if self._owns_channel:
            await self._channel.close()

    async def send(
        self,
        to: str,
        body: str | None = None,
        *,
        channel: str | int | None = None,
        content_sid: str | None = None,
        variables: Mapping[str, str] | None = None,
        media_urls: Sequence[str] = (),
        idempotency_key: str | None = None,
        tags: Sequence[str] = (),
        send_at: datetime | None = None,
        validity: timedelta | None = None,
        expire_at_deadline: bool = False,
        wait_for_acceptance: bool = False,
        sender: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> pb.SendMessageResponse:
        """SendMessage: store one message durably; returns its id and status.

        ``sender``: the sender profile to send from (the server's NOTIFIER_SENDERS);
        None: "default"."""
        request = pb.SendMessageRequest(
            to=to,
            sender=sender or "",
            channel=parse_channel(channel),
            variables=dict(variables or {}),
            media_urls=list(media_urls),
            idempotency_key=self._key(idempotency_key),
            tags=list(tags),
            expire_at_deadline=expire_at_deadline,
            wait_for_acceptance=wait_for_acceptance,
        )
        _set_content(request, body, content_sid)
        if send_at is not None:
            request.send_at.CopyFrom(timestamp(send_at))
        if validity is not None:
            request.validity.CopyFrom(duration(validity))
        default = self.deadlines.send_and_wait if wait_for_acceptance else self.deadlines.unary
        return await self._unary(self.stub.SendMessage, request, timeout, default)

    async def bulk(
        self,
        items: Iterable[pb.BulkItem] | AsyncIterable[pb.BulkItem],
        *,
        defaults: pb.BulkContent | None = None,
        batch_size: int = 100,
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[pb.BulkItemResult]:
        """SendBulk: stream ``items`` (sync or async iterable), yield one result per item,
        in item order. A refused item is a result with ``error`` set, never an exception;
        an exception means the whole stream failed (results so far stand).

        Items go out ``batch_size`` per request; gRPC flow control holds the source back
        when the server is slower than it.
        """
        requests = _bulk_requests(items, defaults, batch_size)
        call = self.stub.SendBulk(requests, timeout=self._deadline(timeout, self.deadlines.bulk))
        try:
            async for response in call:
                for result in response.results:
                    yield result
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    async def notify_order(
        self,
        order_id: str,
        *,
        customer_name: str,
        customer_email: str,
        items: Iterable[pb.OrderItem | tuple[str, int, str]],
        total: str,
        currency: str,
        content_sid: str | None = None,
        variables: Mapping[str, str] | None = None,
        timeout: Timeout = DEFAULT,
    ) -> pb.NotifyOrderResponse:
        """NotifyOrder; ``items`` as OrderItem or (title, quantity, unit_price) tuples."""
        request = pb.NotifyOrderRequest(
            order_id=order_id,
            customer_name=customer_name,
            customer_email=customer_email,
            items=[_order_item(i) for i in items],
            total=total,
            currency=currency,
            content_sid=content_sid or "",
            variables=dict(variables or {}),
        )
        return await self._unary(self.stub.NotifyOrder, request, timeout)

    async def notify_admins(
        self,
        notification: AdminNotification,
        *,
        idempotency_key: str | None = None,
        content_sid: str | None = None,
        variables: Mapping[str, str] | None = None,
        timeout: Timeout = DEFAULT,
    ) -> pb.NotifyAdminsResponse:
        """NotifyAdmins with a booking, low-stock, event-capacity or custom notification.

        A custom notification without a key gets a generated one, so the channel's retry
        can never send it twice; the others deduplicate on their natural id.
        """
        key = idempotency_key or ""
        if not key and isinstance(notification, pb.CustomNotification) and self.retry_sends:
            key = self._key(None)
        request = pb.NotifyAdminsRequest(
            idempotency_key=key, content_sid=content_sid or "", variables=dict(variables or {})
        )
        getattr(request, _ADMIN_FIELDS[type(notification)]).CopyFrom(notification)
        return await self._unary(self.stub.NotifyAdmins, request, timeout)

    async def status(
        self,
        message_id: str | None = None,
        *,
        twilio_sid: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> pb.GetDeliveryStatusResponse:
        """GetDeliveryStatus by message id or Twilio SID: the message, history, attempts."""
        if (message_id is None) == (twilio_sid is None):
            raise ValueError("pass exactly one of message_id and twilio_sid")
        request = (
            pb.GetDeliveryStatusRequest(message_id=message_id)
            if message_id is not None
            else pb.GetDeliveryStatusRequest(twilio_sid=twilio_sid)
        )
        return await self._unary(self.stub.GetDeliveryStatus, request, timeout)

    async def metrics(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        channel: str | int | None = None,
        tag: str | None = None,
        sender: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> pb.GetMetricsResponse:
        """GetMetrics over [start, end) (default: the last 24 hours); ``sender``: only
        that sender profile's messages."""
        request = pb.GetMetricsRequest(
            channel=parse_channel(channel), tag=tag or "", sender=sender or ""
        )
        if start is not None:
            request.start_time.CopyFrom(timestamp(start))
        if end is not None:
            request.end_time.CopyFrom(timestamp(end))
        return await self._unary(self.stub.GetMetrics, request, timeout)

    async def list(
        self,
        filter: pb.MessageFilter | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: Timeout = DEFAULT,
    ) -> pb.ListMessagesResponse:
        """ListMessages: one page, newest first (see ``list_all`` for every page)."""
        request = pb.ListMessagesRequest(filter=filter, page_size=page_size, page_token=page_token)
        return await self._unary(self.stub.ListMessages, request, timeout)

    async def list_all(
        self,
        filter: pb.MessageFilter | None = None,
        *,
        page_size: int = 100,
        limit: int | None = None,
    ) -> AsyncIterator[pb.Message]:
        """Every matching message, newest first, fetching pages as the caller reads."""
        token, seen = "", 0
        while True:
            page = await self.list(filter, page_size=page_size, page_token=token)
            for message in page.messages:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield message
            token = page.next_page_token
            if not token:
                return

    async def retry(
        self,
        message_ids: Sequence[str] = (),
        *,
        filter: pb.MessageFilter | None = None,
        limit: int = 0,
        validity: timedelta | None = None,
        timeout: Timeout = DEFAULT,
    ) -> pb.RetryMessagesResponse:
        """RetryMessages: re-queue failed messages by ids or by filter (not both)."""
        request = pb.RetryMessagesRequest(message_ids=list(message_ids), filter=filter, limit=limit)
        if validity is not None:
            request.validity.CopyFrom(duration(validity))
        return await self._unary(self.stub.RetryMessages, request, timeout)

    async def cancel(self, message_id: str, *, timeout: Timeout = DEFAULT) -> pb.Message:
        """CancelMessage: the message, now CANCELED."""
        request = pb.CancelMessageRequest(message_id=message_id)
        reply = await self._unary(self.stub.CancelMessage, request, timeout)
        return reply.message

    async def erase_recipient(
        self, to: str, *, at_twilio: bool = False, timeout: Timeout = DEFAULT
    ) -> pb.EraseRecipientResponse:
        """EraseRecipient: what was erased about ``to``, per kind of data."""
        request = pb.EraseRecipientRequest(to=to, at_twilio=at_twilio)
        return await self._unary(self.stub.EraseRecipient, request, timeout)

    async def watch(
        self,
        message_ids: Sequence[str] = (),
        *,
        tag: str | None = None,
        include_current: bool = False,
        until_final: bool = False,
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[pb.WatchDeliveryStatusResponse]:
        """WatchDeliveryStatus as an async iterator of status changes.

        ``until_final`` ends the iteration once every watched id is final (see
        ``is_final``); without it the watch runs until the caller stops iterating or the
        deadline passes. Stopping early cancels the call on the server.
        """
        request = pb.WatchDeliveryStatusRequest(
            message_ids=list(message_ids), tag=tag or "", include_current=include_current
        )
        call = self.stub.WatchDeliveryStatus(
            request, timeout=self._deadline(timeout, self.deadlines.watch)
        )
        pending = set(message_ids)
        try:
            async for update in call:
                yield update
                if is_final(update.message):
                    pending.discard(update.message_id)
                if until_final and message_ids and not pending:
                    return
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    def _key(self, key: str | None) -> str:
        if key:
            return key
        return f"auto-{uuid.uuid4().hex}" if self.retry_sends else ""

    @staticmethod
    def _deadline(timeout: Timeout, default: float | None) -> float | None:
        return default if isinstance(timeout, _Default) else timeout

    async def _unary(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout: Timeout,
        default: float | _Default | None = DEFAULT,
    ) -> _Resp:
        fallback = self.deadlines.unary if isinstance(default, _Default) else default
        try:
            return await rpc(request, timeout=self._deadline(timeout, fallback))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc


def _set_content(request: pb.SendMessageRequest, body: str | None, sid: str | None) -> None:
    if body is not None:
        request.body = body
    if sid is not None:
        request.content_sid = sid  # both set: the server names the conflict


def _order_item(item: pb.OrderItem | tuple[str, int, str]) -> pb.OrderItem:
    if isinstance(item, pb.OrderItem):
        return item
    title, quantity, unit_price = item
    return pb.OrderItem(title=title, quantity=quantity, unit_price=unit_price)


def bulk_item(
    to: str,
    body: str | None = None,
    *,
    correlation_id: str = "",
    content_sid: str | None = None,
    variables: Mapping[str, str] | None = None,
    media_urls: Sequence[str] = (),
    idempotency_key: str = "",
    tags: Sequence[str] = (),
) -> pb.BulkItem:
    """A BulkItem from plain values; content left unset falls back to the defaults."""
    item = pb.BulkItem(
        correlation_id=correlation_id,
        to=to,
        variables=dict(variables or {}),
        media_urls=list(media_urls),
        idempotency_key=idempotency_key,
        tags=list(tags),
    )
    if body is not None:
        item.body = body
    if content_sid is not None:
        item.content_sid = content_sid
    return item


async def _bulk_requests(
    items: Iterable[pb.BulkItem] | AsyncIterable[pb.BulkItem],
    defaults: pb.BulkContent | None,
    batch_size: int,
) -> AsyncIterator[pb.SendBulkRequest]:
    """Items grouped ``batch_size`` per request; the defaults ride on the first one."""
    batch: list[pb.BulkItem] = []
    first = True
    async for item in _aiter(items):
        batch.append(item)
        if len(batch) >= batch_size:
            yield _bulk_request(batch, defaults if first else None)
            batch, first = [], False
    if batch or first:
        yield _bulk_request(batch, defaults if first else None)


def _bulk_request(items: list[pb.BulkItem], defaults: pb.BulkContent | None) -> pb.SendBulkRequest:
    return pb.SendBulkRequest(defaults=defaults, items=items)


async def _aiter(
    items: Iterable[pb.BulkItem] | AsyncIterable[pb.BulkItem],
) -> AsyncIterator[pb.BulkItem]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
