"""Protobuf to domain types and back; nothing else."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

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
from notifier.domain.validation import QueryRequest, SendRequest
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


def send_request(req: pb.SendMessageRequest, deadline_ms: int | None) -> SendRequest:
    content = req.WhichOneof("content")
    return SendRequest(
        to=req.to,
        channel=channel_from_pb(req.channel),
        body=req.body if content == "body" else None,
        content_sid=req.content_sid if content == "content_sid" else None,
        variables=dict(req.variables),
        media_urls=list(req.media_urls),
        idempotency_key=req.idempotency_key,
        tags=list(req.tags),
        send_at_ms=req.send_at.ToMilliseconds() if req.HasField("send_at") else None,
        validity_ms=req.validity.ToMilliseconds() if req.HasField("validity") else None,
        deadline_ms=deadline_ms if req.expire_at_deadline else None,
        wait_for_acceptance=req.wait_for_acceptance,
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
    )
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
        created_after_ms=f.created_after.ToMilliseconds() if f.HasField("created_after") else None,
        created_before_ms=(
            f.created_before.ToMilliseconds() if f.HasField("created_before") else None
        ),
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
