"""Protobuf to domain types and back; nothing else."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import TypedDict

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from notifier.api.errors import MAX_ECHO, short
from notifier.domain.bulk import (
    BulkDefaults,
    BulkItem,
    BulkRequest,
    BulkResult,
    ItemFailure,
)
from notifier.domain.delivery import meaning
from notifier.domain.errors import ValidationFailed, Violation
from notifier.domain.lifecycle import Erased
from notifier.domain.metrics import Metrics, MetricsRequest
from notifier.domain.model import (
    Accepted,
    Channel,
    Delivery,
    MessageRecord,
    Page,
    RetryOutcome,
    Status,
    StatusEvent,
)
from notifier.domain.notifications import (
    AdminNotified,
    AdminRequest,
    Booking,
    Custom,
    EventCapacity,
    LowStock,
    Notification,
    OrderItem,
    OrderRequest,
)
from notifier.domain.validation import QueryRequest, SendRequest
from notifier.domain.watch import StatusChange
from notifier_proto.v1 import notifier_pb2 as pb

_TIMESTAMP_FIELDS = {
    Status.PENDING: "created",
    Status.SCHEDULED: "created",
    Status.QUEUED: "queued",
    Status.ACCEPTED: "accepted",
    Status.SENDING: "sending",
    Status.SENT: "sent",
    Status.DELIVERED: "delivered",
    Status.READ: "read",
    Status.FAILED: "failed",
    Status.UNDELIVERED: "undelivered",
    Status.CANCELED: "canceled",
    Status.EXPIRED: "expired",
}


def channel_from_pb(value: int) -> Channel | None:
    if value == pb.CHANNEL_WHATSAPP:
        return Channel.WHATSAPP
    if value == pb.CHANNEL_SMS:
        return Channel.SMS
    return None


_CHANNELS: dict[Channel, pb.Channel] = {c: getattr(pb, f"CHANNEL_{c.name}") for c in Channel}
_STATUSES: dict[Status, pb.MessageStatus] = {
    s: getattr(pb, f"MESSAGE_STATUS_{s.name}") for s in Status
}


def channel_to_pb(channel: Channel) -> pb.Channel:
    return _CHANNELS[channel]


def status_to_pb(status: Status) -> pb.MessageStatus:
    return _STATUSES[status]


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def time_ms(holder: Message, name: str, path: str | None = None) -> int | None:
    """Milliseconds of the Timestamp or Duration field ``name`` of ``holder``, None if unset.

    protobuf refuses to convert values outside the well-known types' ranges (years 1 to
    9999; 10,000 years of duration; nanos of the wrong sign): that is the caller's bad
    input, so it is INVALID_ARGUMENT naming the field, not a ValueError (INTERNAL).
    """
    if not holder.HasField(name):
        return None
    value = getattr(holder, name)
    try:
        return int(value.ToMilliseconds())
    except ValueError:
        kind = value.DESCRIPTOR.name
        raise ValidationFailed(
            [Violation(path or name, f"is not a valid google.protobuf.{kind}")]
        ) from None


class _Content(TypedDict):
    body: str | None
    content_sid: str | None


def _content(holder: pb.SendMessageRequest | pb.BulkContent | pb.BulkItem) -> _Content:
    """The ``content`` oneof as keyword arguments: the field set, the other one None."""
    content = holder.WhichOneof("content")
    return {
        "body": holder.body if content == "body" else None,
        "content_sid": holder.content_sid if content == "content_sid" else None,
    }


def send_request(req: pb.SendMessageRequest, deadline_ms: int | None) -> SendRequest:
    return SendRequest(
        to=req.to,
        channel=channel_from_pb(req.channel),
        **_content(req),
        variables=dict(req.variables),
        media_urls=list(req.media_urls),
        idempotency_key=req.idempotency_key,
        tags=list(req.tags),
        send_at_ms=time_ms(req, "send_at"),
        validity_ms=time_ms(req, "validity"),
        deadline_ms=deadline_ms if req.expire_at_deadline else None,
        wait_for_acceptance=req.wait_for_acceptance,
        sender=req.sender,
        fallback_sms=req.fallback.sms,
        fallback_body=req.fallback.sms_body,
    )


def send_response(accepted: Accepted) -> pb.SendMessageResponse:
    message = accepted.message
    return pb.SendMessageResponse(
        message_id=message.id,
        status=status_to_pb(message.status),
        replayed=accepted.replayed,
        twilio_sid=message.twilio_sid or "",
        created_at=timestamp(message.created_at_ms),
    )


def message_to_pb(record: MessageRecord, delivery: Delivery | None = None) -> pb.Message:
    out = pb.Message(
        message_id=record.id,
        twilio_sid=record.twilio_sid or "",
        status=status_to_pb(record.status),
        channel=channel_to_pb(record.channel),
        to=record.to,
        tags=list(record.tags),
        attempts=record.attempts,
        error_code=record.error_code or 0,
        error_message=record.error_message or "",
        updated_at=timestamp(record.updated_at_ms),
        sender=record.sender,
        redacted=record.redacted,
        fallback_message_id=record.fallback_id or "",
        fallback_of=record.fallback_of or "",
        fallback_reason=record.fallback_reason or "",
        error_meaning=meaning(record.error_code),
    )
    if record.fallback_status is not None:
        out.fallback_status = status_to_pb(record.fallback_status)
    out.timestamps.created.CopyFrom(timestamp(record.created_at_ms))
    if record.send_at_ms is not None:
        out.send_at.CopyFrom(timestamp(record.send_at_ms))
    if record.expires_at_ms is not None:
        out.expires_at.CopyFrom(timestamp(record.expires_at_ms))
    if record.next_attempt_at_ms is not None and record.status is Status.PENDING:
        out.next_attempt_at.CopyFrom(timestamp(record.next_attempt_at_ms))
    if delivery is not None:
        for status, ms in delivery.first_reached().items():
            if status not in (Status.PENDING, Status.SCHEDULED):
                getattr(out.timestamps, _TIMESTAMP_FIELDS[status]).CopyFrom(timestamp(ms))
        out.delivery_time_ms = delivery.delivery_time_ms or 0
    return out


def event_to_pb(event: StatusEvent) -> pb.StatusEvent:
    return pb.StatusEvent(
        status=status_to_pb(event.status),
        occurred_at=timestamp(event.occurred_at_ms),
        source=event.source,
        error_code=event.error_code or 0,
        applied=event.applied,
        actor=event.actor or "",
    )


def delivery_to_pb(delivery: Delivery) -> pb.GetDeliveryStatusResponse:
    attempts = [
        pb.Attempt(
            number=a.number,
            started_at=timestamp(a.started_at_ms),
            finished_at=timestamp(a.finished_at_ms) if a.finished_at_ms is not None else None,
            outcome=a.outcome,
            http_status=a.http_status or 0,
            error_code=a.error_code or 0,
            error_message=a.error_message or "",
        )
        for a in delivery.attempts
    ]
    return pb.GetDeliveryStatusResponse(
        message=message_to_pb(delivery.message, delivery),
        history=[event_to_pb(e) for e in delivery.events],
        attempts=attempts,
    )


_STATUS_FROM_PB: dict[int, Status] = {int(v): k for k, v in _STATUSES.items()}


def query_request(f: pb.MessageFilter) -> QueryRequest:
    return QueryRequest(
        statuses=[_STATUS_FROM_PB[s] for s in f.statuses if s in _STATUS_FROM_PB],
        to=f.to,
        tag=f.tag,
        channel=channel_from_pb(f.channel),
        created_after_ms=time_ms(f, "created_after", "filter.created_after"),
        created_before_ms=time_ms(f, "created_before", "filter.created_before"),
        sender=f.sender,
    )


def list_response(page: Page) -> pb.ListMessagesResponse:
    return pb.ListMessagesResponse(
        messages=[message_to_pb(m) for m in page.messages],
        next_page_token=page.next_token or "",
    )


def retry_response(outcome: RetryOutcome) -> pb.RetryMessagesResponse:
    return pb.RetryMessagesResponse(
        message_ids=list(outcome.requeued),
        skipped=[pb.SkippedMessage(message_id=m, reason=r) for m, r in outcome.skipped],
    )


def metrics_request(req: pb.GetMetricsRequest) -> MetricsRequest:
    """Unset window ends stay None: the domain fills in its defaults from its own clock."""
    return MetricsRequest(
        start_ms=time_ms(req, "start_time"),
        end_ms=time_ms(req, "end_time"),
        channel=channel_from_pb(req.channel),
        tag=req.tag,
        sender=req.sender,
    )


def metrics_response(metrics: Metrics) -> pb.GetMetricsResponse:
    age = duration_pb2.Duration()
    age.FromMilliseconds(metrics.oldest_pending_age_ms)
    return pb.GetMetricsResponse(
        total=metrics.total,
        # In lifecycle order (the Status enum's), so a reader sees the pipeline in order.
        by_status=[
            pb.StatusCount(status=status_to_pb(s), count=metrics.by_status[s])
            for s in Status
            if metrics.by_status.get(s, 0) > 0
        ],
        delivery_rate=metrics.delivery_rate,
        read_rate=metrics.read_rate,
        failure_rate=metrics.failure_rate,
        avg_delivery_time_ms=metrics.avg_delivery_time_ms,
        p50_delivery_time_ms=metrics.p50_delivery_time_ms,
        p95_delivery_time_ms=metrics.p95_delivery_time_ms,
        error_codes=[
            pb.ErrorCodeCount(error_code=e.code, error_message=e.meaning, count=e.count)
            for e in metrics.error_codes
        ],
        retries=metrics.retries,
        ambiguous_outcomes=metrics.ambiguous_outcomes,
        queue_depth=metrics.queue_depth,
        oldest_pending_age=age,
        scheduled=metrics.scheduled,
        reconciled=metrics.reconciled,
        unconfirmed=metrics.unconfirmed,
        fallbacks=metrics.fallbacks,
        fallbacks_delivered=metrics.fallbacks_delivered,
    )


def watch_response(change: StatusChange) -> pb.WatchDeliveryStatusResponse:
    """One status change of a watched message; ``message`` is its state when read."""
    return pb.WatchDeliveryStatusResponse(
        message_id=change.message.id,
        status=status_to_pb(change.message.status),
        event=event_to_pb(change.event),
        message=message_to_pb(change.message),
    )


def _bulk_defaults(d: pb.BulkContent) -> BulkDefaults:
    return BulkDefaults(
        channel=channel_from_pb(d.channel),
        **_content(d),
        variables=dict(d.variables),
        media_urls=list(d.media_urls),
        tags=list(d.tags),
        send_at_ms=time_ms(d, "send_at", "defaults.send_at"),
        validity_ms=time_ms(d, "validity", "defaults.validity"),
        sender=d.sender,
        fallback_sms=d.fallback.sms,
        fallback_body=d.fallback.sms_body,
    )


def _bulk_item(i: pb.BulkItem) -> BulkItem:
    return BulkItem(
        correlation_id=i.correlation_id,
        to=i.to,
        variables=dict(i.variables),
        **_content(i),
        media_urls=list(i.media_urls),
        idempotency_key=i.idempotency_key,
        tags=list(i.tags),
    )


async def bulk_requests(requests: AsyncIterator[pb.SendBulkRequest]) -> AsyncIterator[BulkRequest]:
    async for request in requests:
        defaults = _bulk_defaults(request.defaults) if request.HasField("defaults") else None
        yield BulkRequest(defaults, [_bulk_item(i) for i in request.items])


# Replies stay well under the 4 MiB a gRPC client accepts by default: a small request
# (500 empty items, 600 empty media URLs) can fail every item with hundreds of
# violations, and one reply per batch then grew past it (RESOURCE_EXHAUSTED at the caller).
MAX_BULK_REPLY_BYTES = 1 << 20
ITEM_VIOLATIONS_BUDGET = 1_000


def _bulk_result(r: BulkResult) -> pb.BulkItemResult:
    item = pb.BulkItemResult(correlation_id=r.correlation_id, index=r.index)
    if isinstance(r.outcome, ItemFailure):
        item.error.code = r.outcome.code
        item.error.message = short(r.outcome.message, 2 * MAX_ECHO)
        violations = r.outcome.violations
        for i, v in enumerate(violations):
            if item.error.ByteSize() > ITEM_VIOLATIONS_BUDGET:
                item.error.violations.add(
                    field="item", description=f"{len(violations) - i} more violation(s) not shown"
                )
                break
            item.error.violations.add(field=short(v.field), description=short(v.description))
    else:
        item.accepted.CopyFrom(send_response(r.outcome))
    return item


def bulk_responses(results: list[BulkResult]) -> list[pb.SendBulkResponse]:
    """The results of one committed batch, in order, split into replies of bounded size."""
    out = [pb.SendBulkResponse()]
    size = 0
    for r in results:
        item = _bulk_result(r)
        n = item.ByteSize() + 8
        if out[-1].results and size + n > MAX_BULK_REPLY_BYTES:
            out.append(pb.SendBulkResponse())
            size = 0
        out[-1].results.append(item)
        size += n
    return out


def order_request(req: pb.NotifyOrderRequest) -> OrderRequest:
    return OrderRequest(
        order_id=req.order_id,
        customer_name=req.customer_name,
        customer_email=req.customer_email,
        items=[
            OrderItem(title=i.title, quantity=i.quantity, unit_price=i.unit_price)
            for i in req.items
        ],
        total=req.total,
        currency=req.currency,
        content_sid=req.content_sid,
        variables=dict(req.variables),
    )


def _admin_notification(req: pb.NotifyAdminsRequest) -> Notification | None:
    """The oneof as a domain value; None when unset (the domain reports it)."""
    kind = req.WhichOneof("notification")
    if kind == "booking":
        b = req.booking
        return Booking(
            booking_id=b.booking_id,
            customer_name=b.customer_name,
            customer_email=b.customer_email,
            item=b.item,
            starts_at_ms=time_ms(b, "starts_at", "booking.starts_at"),
            quantity=b.quantity,
            time_zone=b.time_zone,
        )
    if kind == "low_stock":
        s = req.low_stock
        return LowStock(
            product_id=s.product_id,
            product_name=s.product_name,
            sku=s.sku,
            current_stock=s.current_stock,
            threshold=s.threshold,
        )
    if kind == "event_capacity":
        e = req.event_capacity
        return EventCapacity(
            event_id=e.event_id,
            event_name=e.event_name,
            registered=e.registered,
            capacity=e.capacity,
            starts_at_ms=time_ms(e, "starts_at", "event_capacity.starts_at"),
        )
    if kind == "custom":
        return Custom(title=req.custom.title, body=req.custom.body)
    return None


def admin_request(req: pb.NotifyAdminsRequest) -> AdminRequest:
    return AdminRequest(
        notification=_admin_notification(req),
        idempotency_key=req.idempotency_key,
        content_sid=req.content_sid,
        variables=dict(req.variables),
    )


def _admin_deliveries(notified: AdminNotified) -> list[pb.AdminDelivery]:
    return [
        pb.AdminDelivery(to=d.to, message_id=d.message_id, status=status_to_pb(d.status))
        for d in notified.deliveries
    ]


def notify_order_response(notified: AdminNotified) -> pb.NotifyOrderResponse:
    return pb.NotifyOrderResponse(
        deliveries=_admin_deliveries(notified), replayed=notified.replayed
    )


def notify_admins_response(notified: AdminNotified) -> pb.NotifyAdminsResponse:
    return pb.NotifyAdminsResponse(
        deliveries=_admin_deliveries(notified), replayed=notified.replayed
    )


def erase_response(erased: Erased) -> pb.EraseRecipientResponse:
    return pb.EraseRecipientResponse(**dataclasses.asdict(erased))
