"""Conversions between the protobuf enums and Python values callers actually have.

Statuses and channels travel as enum numbers; people type ``failed`` or ``sms``. Times
are ``datetime`` / ``timedelta`` on this side and Timestamp / Duration on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TypeAlias, cast

from google.protobuf import duration_pb2, timestamp_pb2

from notifier_proto.v1 import notifier_pb2 as pb

Status: TypeAlias = pb.MessageStatus
ChannelValue: TypeAlias = pb.Channel

TERMINAL: frozenset[Status] = frozenset(
    {
        pb.MESSAGE_STATUS_FAILED,
        pb.MESSAGE_STATUS_UNDELIVERED,
        pb.MESSAGE_STATUS_CANCELED,
        pb.MESSAGE_STATUS_EXPIRED,
        pb.MESSAGE_STATUS_READ,
    }
)
"""Statuses after which nothing more happens to a message. READ is the last step of the
success path (DELIVERED is not terminal on WhatsApp: READ may follow)."""


def is_final(message: pb.Message) -> bool:
    """Nothing more will happen to ``message``: a terminal status, or DELIVERED on SMS
    (SMS has no read receipts, so its success path ends there)."""
    if message.status in TERMINAL:
        return True
    return message.status == pb.MESSAGE_STATUS_DELIVERED and message.channel == pb.CHANNEL_SMS


def status_name(status: int) -> str:
    """``MESSAGE_STATUS_DELIVERED`` -> ``delivered``."""
    return pb.MessageStatus.Name(status).removeprefix("MESSAGE_STATUS_").lower()


def parse_status(name: str | int) -> Status:
    """``failed`` / ``FAILED`` / ``MESSAGE_STATUS_FAILED`` -> the enum value."""
    if isinstance(name, int):
        return cast(Status, name)
    key = name.strip().upper()
    if not key.startswith("MESSAGE_STATUS_"):
        key = "MESSAGE_STATUS_" + key
    try:
        return cast(Status, pb.MessageStatus.Value(key))
    except ValueError:
        known = ", ".join(status_name(v) for v in pb.MessageStatus.values() if v)
        raise ValueError(f"unknown status {name!r} (one of: {known})") from None


def channel_name(channel: int) -> str:
    """``CHANNEL_SMS`` -> ``sms``; unspecified reads as WhatsApp, as on the server."""
    if channel == pb.CHANNEL_UNSPECIFIED:
        return "whatsapp"
    return pb.Channel.Name(channel).removeprefix("CHANNEL_").lower()


def parse_channel(name: str | int | None) -> ChannelValue:
    """``sms`` / ``whatsapp`` / an enum value -> the enum value (None: unspecified)."""
    if name is None:
        return pb.CHANNEL_UNSPECIFIED
    if isinstance(name, int):
        return cast(ChannelValue, name)
    key = "CHANNEL_" + name.strip().upper().removeprefix("CHANNEL_")
    try:
        return cast(ChannelValue, pb.Channel.Value(key))
    except ValueError:
        raise ValueError(f"unknown channel {name!r} (whatsapp or sms)") from None


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp; a naive datetime is taken as UTC, as protobuf does."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def duration(value: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def message_filter(
    *,
    statuses: Iterable[str | int] = (),
    to: str | None = None,
    tag: str | None = None,
    channel: str | int | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    sender: str | None = None,
) -> pb.MessageFilter:
    """A MessageFilter from plain values, for ``list`` and ``retry``."""
    f = pb.MessageFilter(
        sender=sender or "",
        statuses=[parse_status(s) for s in statuses],
        to=to or "",
        tag=tag or "",
        channel=parse_channel(channel),
    )
    if created_after is not None:
        f.created_after.CopyFrom(timestamp(created_after))
    if created_before is not None:
        f.created_before.CopyFrom(timestamp(created_before))
    return f
