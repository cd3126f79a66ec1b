"""Watching status changes (WatchDeliveryStatus), in domain terms.

A watch names messages by id, by tag, or both. Ids are assigned by the server, so an
id unknown when the watch opens can never appear later: such a watch is refused at
once instead of waiting forever. A tag, on the other hand, also covers messages created
after the watch opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from notifier.domain.errors import DomainError, ValidationFailed, Violation
from notifier.domain.model import MessageRecord, StatusEvent
from notifier.domain.validation import QueryRequest, validate_message_id, validate_query

MAX_WATCH_IDS = 1_000


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One stored status event with the state of its message when it was read.

    ``event_id`` is the event's row id: events are numbered in the order they were
    stored, which is the order a watch delivers them. ``message`` is the message as
    it is when the change is read (its tags included, so a tag watch can match it),
    so it may already reflect later events of the same batch.
    """

    event_id: int
    event: StatusEvent
    message: MessageRecord


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """What one watch wants to see: a validated WatchDeliveryStatus request."""

    message_ids: tuple[str, ...] = ()  # in the caller's order, without repeats
    tag: str | None = None
    include_current: bool = False
    owner: str | None = None  # only this caller's messages; None: every caller's

    def visible(self, message: MessageRecord) -> bool:
        return self.owner is None or message.owner == self.owner

    def matches(self, change: StatusChange) -> bool:
        message = change.message
        if not self.visible(message):
            return False
        if message.id in self.message_ids:
            return True
        return self.tag is not None and self.tag in message.tags


def validate_watch(
    message_ids: Sequence[str], tag: str, include_current: bool, owner: str | None = None
) -> WatchSpec:
    """Check every field; raise ValidationFailed with all problems at once."""
    bad: list[Violation] = []
    if not message_ids and not tag:
        bad.append(Violation("message_ids", "set message_ids, tag, or both"))
    unique = tuple(dict.fromkeys(message_ids))
    if len(unique) > MAX_WATCH_IDS:
        bad.append(Violation("message_ids", f"at most {MAX_WATCH_IDS:,} ids, got {len(unique):,}"))
    else:
        for i, mid in enumerate(message_ids):
            validate_message_id(mid, f"message_ids[{i}]", bad)
    # The same tag rules as everywhere else (SendMessage, ListMessages' filter).
    validate_query(QueryRequest(tag=tag), "", bad)
    if bad:
        raise ValidationFailed(bad)
    return WatchSpec(
        message_ids=unique, tag=tag or None, include_current=include_current, owner=owner
    )


class FellBehind(DomainError):
    """A watcher did not read fast enough and its buffer filled: its watch is dropped.

    Dropping one slow watch keeps memory bounded and never holds up the others; the
    caller reopens the watch (with include_current to catch up on the state).
    """

    def __init__(self) -> None:
        super().__init__("watch fell behind; reopen it")


class FeedClosed(DomainError):
    """The server is shutting down and ends every watch; reopen it elsewhere."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down; reopen the watch")
