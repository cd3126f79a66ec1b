"""The notifier.v1.Notifier servicer: converts, calls the domain, converts back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from notifier.api import convert
from notifier.domain.clock import now_ms
from notifier.domain.service import MessageService
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def _deadline_ms(context: Context) -> int | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return now_ms() + int(remaining * 1000)


async def _not_yet(context: Context, rpc: str) -> NoReturn:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is part of the v1 contract but not served yet"
    )


class NotifierServicer(pb_grpc.NotifierServicer):
    def __init__(self, messages: MessageService) -> None:
        self._messages = messages

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        accepted = await self._messages.send(convert.send_request(request, _deadline_ms(context)))
        return convert.send_response(accepted)

    async def GetDeliveryStatus(
        self, request: pb.GetDeliveryStatusRequest, context: Context
    ) -> pb.GetDeliveryStatusResponse:
        ref = request.WhichOneof("ref")
        delivery = await self._messages.delivery(
            message_id=request.message_id if ref == "message_id" else None,
            twilio_sid=request.twilio_sid if ref == "twilio_sid" else None,
        )
        return convert.delivery_to_pb(delivery)

    async def SendBulk(
        self, request_iterator: Any, context: Context
    ) -> AsyncIterator[pb.SendBulkResponse]:
        await _not_yet(context, "SendBulk")
        yield pb.SendBulkResponse()  # never reached; makes this a stream handler

    async def NotifyOrder(self, request: pb.NotifyOrderRequest, context: Context) -> Any:
        await _not_yet(context, "NotifyOrder")

    async def NotifyAdmins(self, request: pb.NotifyAdminsRequest, context: Context) -> Any:
        await _not_yet(context, "NotifyAdmins")

    async def GetMetrics(self, request: pb.GetMetricsRequest, context: Context) -> Any:
        await _not_yet(context, "GetMetrics")

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        page = await self._messages.list_messages(
            convert.query_request(request.filter), request.page_size, request.page_token
        )
        return convert.list_response(page)

    async def RetryMessages(
        self, request: pb.RetryMessagesRequest, context: Context
    ) -> pb.RetryMessagesResponse:
        outcome = await self._messages.retry(
            list(request.message_ids),
            convert.query_request(request.filter) if request.HasField("filter") else None,
            request.limit,
            request.validity.ToMilliseconds() if request.HasField("validity") else None,
        )
        return convert.retry_response(outcome)

    async def CancelMessage(
        self, request: pb.CancelMessageRequest, context: Context
    ) -> pb.CancelMessageResponse:
        record = await self._messages.cancel(request.message_id)
        return pb.CancelMessageResponse(message=convert.message_to_pb(record))

    async def WatchDeliveryStatus(
        self, request: pb.WatchDeliveryStatusRequest, context: Context
    ) -> AsyncIterator[pb.WatchDeliveryStatusResponse]:
        await _not_yet(context, "WatchDeliveryStatus")
        yield pb.WatchDeliveryStatusResponse()  # never reached; makes this a stream handler
