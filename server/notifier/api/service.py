"""The notifier.v1.Notifier servicer: converts, calls the domain, converts back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import grpc

from notifier.api import convert
from notifier.api.auth import Callers
from notifier.domain.access import Caller
from notifier.domain.bulk import BulkSender
from notifier.domain.clock import now_ms
from notifier.domain.ports import StatusWatch
from notifier.domain.service import MessageService
from notifier.domain.watch import FeedClosed, FellBehind, validate_watch
from notifier.telemetry import current_traceparent
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def _deadline_ms(context: Context) -> int | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return now_ms() + int(remaining * 1000)


class _Origin(TypedDict):
    caller: Caller
    traceparent: str | None


class NotifierServicer(pb_grpc.NotifierServicer):
    def __init__(
        self,
        messages: MessageService,
        watch: StatusWatch,
        bulk: BulkSender,
        callers: Callers | None = None,
    ) -> None:
        self._messages = messages
        self._watch = watch
        self._bulk = bulk
        self._callers = callers or Callers(())

    def _caller(self, context: Context) -> Caller:
        """Who is calling: scopes, owner (visibility), allowed senders."""
        return self._callers.of(context.invocation_metadata())

    def _origin(self, context: Context) -> _Origin:
        """Who stores messages, and the trace they belong to: the same for every write."""
        # Idempotency keys and order ids are per caller (SPEC §3): with tokens, per token.
        return {"caller": self._caller(context), "traceparent": current_traceparent()}

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        accepted = await self._messages.send(
            convert.send_request(request, _deadline_ms(context)),
            **self._origin(context),
        )
        return convert.send_response(accepted)

    async def GetDeliveryStatus(
        self, request: pb.GetDeliveryStatusRequest, context: Context
    ) -> pb.GetDeliveryStatusResponse:
        ref = request.WhichOneof("ref")
        delivery = await self._messages.delivery(
            message_id=request.message_id if ref == "message_id" else None,
            twilio_sid=request.twilio_sid if ref == "twilio_sid" else None,
            caller=self._caller(context),
        )
        return convert.delivery_to_pb(delivery)

    async def SendBulk(
        self, request_iterator: AsyncIterator[pb.SendBulkRequest], context: Context
    ) -> AsyncIterator[pb.SendBulkResponse]:
        requests = convert.bulk_requests(request_iterator)
        async for results in self._bulk.run(requests, **self._origin(context)):
            for response in convert.bulk_responses(results):
                yield response

    async def NotifyOrder(
        self, request: pb.NotifyOrderRequest, context: Context
    ) -> pb.NotifyOrderResponse:
        notified = await self._messages.notify_order(
            convert.order_request(request), **self._origin(context)
        )
        return convert.notify_order_response(notified)

    async def NotifyAdmins(
        self, request: pb.NotifyAdminsRequest, context: Context
    ) -> pb.NotifyAdminsResponse:
        notified = await self._messages.notify_admins(
            convert.admin_request(request), **self._origin(context)
        )
        return convert.notify_admins_response(notified)

    async def GetMetrics(
        self, request: pb.GetMetricsRequest, context: Context
    ) -> pb.GetMetricsResponse:
        metrics = await self._messages.metrics(
            convert.metrics_request(request), self._caller(context)
        )
        return convert.metrics_response(metrics)

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        page = await self._messages.list_messages(
            convert.query_request(request.filter),
            request.page_size,
            request.page_token,
            self._caller(context),
        )
        return convert.list_response(page)

    async def RetryMessages(
        self, request: pb.RetryMessagesRequest, context: Context
    ) -> pb.RetryMessagesResponse:
        outcome = await self._messages.retry(
            list(request.message_ids),
            convert.query_request(request.filter) if request.HasField("filter") else None,
            request.limit,
            convert.time_ms(request, "validity"),
            self._caller(context),
        )
        return convert.retry_response(outcome)

    async def CancelMessage(
        self, request: pb.CancelMessageRequest, context: Context
    ) -> pb.CancelMessageResponse:
        record = await self._messages.cancel(request.message_id, self._caller(context))
        return pb.CancelMessageResponse(message=convert.message_to_pb(record))

    async def EraseRecipient(
        self, request: pb.EraseRecipientRequest, context: Context
    ) -> pb.EraseRecipientResponse:
        erased = await self._messages.erase_recipient(request.to, at_twilio=request.at_twilio)
        return convert.erase_response(erased)

    async def WatchDeliveryStatus(
        self, request: pb.WatchDeliveryStatusRequest, context: Context
    ) -> AsyncIterator[pb.WatchDeliveryStatusResponse]:
        """Stream each new status event of the watched messages until the caller cancels
        or its deadline passes (both end the stream quietly and free the watch).

        A watch that falls behind (its buffer of unread changes fills) ends with
        RESOURCE_EXHAUSTED, a server shutting down ends every watch with UNAVAILABLE;
        either way the caller reopens it, with include_current to catch up.
        """
        spec = validate_watch(
            list(request.message_ids),
            request.tag,
            request.include_current,
            self._caller(context).visible_owner,
        )
        try:
            async with contextlib.aclosing(self._watch.watch(spec)) as changes:
                async for change in changes:
                    yield convert.watch_response(change)
        except FellBehind as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except FeedClosed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
