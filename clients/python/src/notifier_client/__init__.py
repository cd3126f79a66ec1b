"""Typed asyncio client for the Notifier gRPC service.

async with NotifierClient.from_env() as client:
    sent = await client.send("+14155550100", "Your table is ready")
"""

from __future__ import annotations

from notifier_client.channel import RetryPolicy, TlsConfig, create_channel, service_config
from notifier_client.client import DEFAULT, Deadlines, NotifierClient, bulk_item
from notifier_client.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    NotifierError,
    PermissionDenied,
    PreconditionViolation,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    from_rpc_error,
)
from notifier_client.sync import SyncNotifierClient
from notifier_client.types import (
    TERMINAL,
    channel_name,
    is_final,
    message_filter,
    parse_channel,
    parse_status,
    status_name,
)
from notifier_proto.v1 import notifier_pb2 as pb

__all__ = [
    "DEFAULT",
    "TERMINAL",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "Deadlines",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "NotifierClient",
    "NotifierError",
    "PermissionDenied",
    "PreconditionViolation",
    "ResourceExhausted",
    "RetryPolicy",
    "SyncNotifierClient",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "bulk_item",
    "channel_name",
    "create_channel",
    "from_rpc_error",
    "is_final",
    "message_filter",
    "parse_channel",
    "parse_status",
    "pb",
    "service_config",
    "status_name",
]
