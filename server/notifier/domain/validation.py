"""Validation of a send request: every field checked, every violation reported.

A caller fixing a request should see everything wrong with it in one answer, so
the checks below never stop at the first problem.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import phonenumbers

from notifier.domain.errors import ValidationFailed, Violation
from notifier.domain.model import DEFAULT_SENDER, Channel, MessageQuery, NewMessage, Status
from notifier.domain.templates import check_variables

MAX_BODY = 1600
MAX_TAGS = 16
MAX_IDEMPOTENCY_KEY = 255
MAX_MEDIA = {Channel.WHATSAPP: 1, Channel.SMS: 10}
MAX_URL = 2048
MIN_VALIDITY_MS = 1_000
MAX_VALIDITY_MS = 30 * 24 * 3600 * 1000
MAX_SCHEDULE_AHEAD_MS = 366 * 24 * 3600 * 1000
WHATSAPP_PREFIX = "whatsapp:"

CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
_TAG = re.compile(r"^[A-Za-z0-9_\-.:/]{1,64}$")


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A send request as the caller wrote it, before any check."""

    to: str
    channel: Channel | None = None
    body: str | None = None
    content_sid: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    media_urls: Sequence[str] = ()
    idempotency_key: str = ""
    tags: Sequence[str] = ()
    send_at_ms: int | None = None
    validity_ms: int | None = None
    deadline_ms: int | None = None  # set only when the caller asked to expire at its deadline
    wait_for_acceptance: bool = False
    sender: str = ""  # the sender profile; "" is "default"
    fallback_sms: bool = False  # fallback.sms
    fallback_body: str = ""  # fallback.sms_body; "" reuses body


# Parsing and validating a number with phonenumbers was the largest part of validating a
# send (about 0.1 ms of a SendMessage's CPU); callers send to the same recipients again
# and again, and the answer for a given (text, channel) never changes, so it is cached.
# Bounded: a caller sending to ever new numbers only keeps the most recent ones.
RECIPIENT_CACHE_SIZE = 8192


@functools.lru_cache(maxsize=RECIPIENT_CACHE_SIZE)
def parse_recipient(raw: str, channel: Channel | None) -> tuple[str, Channel, str | None]:
    """Return (E.164 number, channel, problem); problem is None when the number is good.

    Pure (the result depends on the arguments only), hence cached (see above)."""
    text = raw.strip()
    prefixed = text.lower().startswith(WHATSAPP_PREFIX)
    number = text[len(WHATSAPP_PREFIX) :].strip() if prefixed else text
    if channel is None:
        channel = Channel.WHATSAPP
    if not text:
        return "", channel, "is required"
    if prefixed and channel is Channel.SMS:
        return "", channel, "has the whatsapp: prefix but channel is SMS"
    if not number.startswith("+"):
        return "", channel, "must be in E.164 form with country code, e.g. +14155550100"
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return "", channel, "is not a phone number; use E.164, e.g. +14155550100"
    if not phonenumbers.is_valid_number(parsed):
        return "", channel, f"{number} is not a valid phone number"
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), channel, None


def _media_problem(url: str) -> str | None:
    if len(url) > MAX_URL:
        return f"is longer than {MAX_URL} characters"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a URL"
    if parts.scheme != "https":
        return "must be an https:// URL"
    if not parts.hostname or any(c.isspace() for c in url):
        return "is not a valid https URL"
    return None


def validate_send(
    req: SendRequest, now_ms: int, senders: Collection[str] | None = None
) -> NewMessage:
    """Check every field of ``req``; return the message to store or raise with all problems.

    ``senders``: the configured sender profiles (None: any name is taken)."""
    bad: list[Violation] = []
    sender = req.sender or DEFAULT_SENDER
    check_sender(sender, senders, "sender", bad)
    to, channel, problem = parse_recipient(req.to, req.channel)
    if problem:
        bad.append(Violation("to", problem))
    _check_content(req, channel, bad)
    _check_fallback(req, channel, bad)
    tags = _check_tags(req.tags, bad)
    key = req.idempotency_key
    if len(key) > MAX_IDEMPOTENCY_KEY:
        bad.append(Violation("idempotency_key", f"is longer than {MAX_IDEMPOTENCY_KEY} characters"))
    elif key and (not key.isprintable() or key.strip() != key):
        bad.append(Violation("idempotency_key", "must be printable, without surrounding spaces"))
    send_at, validity, expires = _check_timing(req, now_ms, bad)
    if req.wait_for_acceptance and send_at is not None:
        bad.append(Violation("wait_for_acceptance", "cannot wait for a scheduled message"))
    if bad:
        raise ValidationFailed(bad)
    return NewMessage(
        to=to,
        channel=channel,
        body=req.body,
        content_sid=req.content_sid,
        variables=dict(req.variables),
        media_urls=tuple(req.media_urls),
        tags=tags,
        send_at_ms=send_at,
        validity_ms=validity,
        expires_at_ms=expires,
        idempotency_key=key or None,
        wait_for_acceptance=req.wait_for_acceptance,
        sender=sender,
        fallback_sms=req.fallback_sms,
        fallback_body=(req.fallback_body or None) if req.fallback_sms else None,
    )


def _check_fallback(req: SendRequest, channel: Channel, bad: list[Violation]) -> None:
    """The SMS fallback needs a WhatsApp message and a text the SMS can carry."""
    text = req.fallback_body
    if not req.fallback_sms:
        if text:
            bad.append(Violation("fallback.sms_body", "only with fallback.sms"))
        return
    if channel is not Channel.WHATSAPP:
        bad.append(Violation("fallback.sms", "only with channel WHATSAPP"))
    if len(text) > MAX_BODY:
        bad.append(Violation("fallback.sms_body", f"has {len(text):,} characters; at most 1,600"))
    elif text and not text.strip():
        bad.append(Violation("fallback.sms_body", "must not be blank"))
    elif not text and not (req.body or "").strip():
        bad.append(
            Violation("fallback.sms_body", "is required unless the message is free text (body)")
        )


def _check_content(req: SendRequest, channel: Channel, bad: list[Violation]) -> None:
    if req.body is not None and req.content_sid is not None:
        bad.append(Violation("content", "set either body or content_sid, not both"))
    if req.body is None and req.content_sid is None and not req.media_urls:
        bad.append(Violation("body", "one of body, content_sid or media_urls is required"))
    if req.body is not None:
        if not req.body.strip() and not req.media_urls:
            bad.append(Violation("body", "must not be empty"))
        elif len(req.body) > MAX_BODY:
            bad.append(Violation("body", f"has {len(req.body):,} characters; at most {MAX_BODY:,}"))
    if req.content_sid is not None:
        if not CONTENT_SID.match(req.content_sid):
            bad.append(
                Violation("content_sid", "must be a Content SID: HX followed by 32 hex digits")
            )
        if req.media_urls:
            bad.append(
                Violation("media_urls", "a template carries its own media; not with content_sid")
            )
    elif req.variables:
        bad.append(Violation("variables", "only with content_sid"))
    check_variables(req.variables, bad)
    limit = MAX_MEDIA[channel]
    if len(req.media_urls) > limit:
        bad.append(
            Violation(
                "media_urls", f"at most {limit} for {channel.name}, got {len(req.media_urls)}"
            )
        )
    for i, url in enumerate(req.media_urls):
        problem = _media_problem(url)
        if problem:
            bad.append(Violation(f"media_urls[{i}]", problem))


def _check_tags(tags: Sequence[str], bad: list[Violation]) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        bad.append(Violation("tags", f"at most {MAX_TAGS} tags, got {len(unique)}"))
    for i, tag in enumerate(tags):
        if not _TAG.match(tag):
            bad.append(Violation(f"tags[{i}]", "1-64 characters: letters, digits and _-.:/"))
    return unique


def _check_timing(
    req: SendRequest, now_ms: int, bad: list[Violation]
) -> tuple[int | None, int | None, int | None]:
    send_at = req.send_at_ms
    if send_at is not None:
        if send_at > now_ms + MAX_SCHEDULE_AHEAD_MS:
            bad.append(Violation("send_at", "must be within 366 days from now"))
        if send_at <= now_ms:
            send_at = None  # due already: nothing to schedule
    validity = req.validity_ms
    if validity is not None and not MIN_VALIDITY_MS <= validity <= MAX_VALIDITY_MS:
        bad.append(Violation("validity", "must be between 1 second and 30 days"))
    start = send_at if send_at is not None else now_ms
    expires = None
    if validity is not None:
        expires = start + validity
    elif req.deadline_ms is not None:
        expires = req.deadline_ms
        if expires <= start:
            bad.append(
                Violation("expire_at_deadline", "the call's deadline is before the send time")
            )
    return send_at, validity, expires


DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_RETRY_LIMIT = 1000
MAX_RETRY_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """A message filter as the caller wrote it (ListMessages, RetryMessages)."""

    statuses: Sequence[Status] = ()
    to: str = ""
    tag: str = ""
    channel: Channel | None = None
    created_after_ms: int | None = None
    created_before_ms: int | None = None
    sender: str = ""


def check_sender(
    name: str, senders: Collection[str] | None, field_name: str, bad: list[Violation]
) -> None:
    """An unknown sender profile is a bad field (``senders`` None: any name goes)."""
    if senders is not None and name not in senders:
        known = ", ".join(sorted(senders))
        bad.append(Violation(field_name, f"is not a configured sender (one of: {known})"))


def validate_query(
    req: QueryRequest,
    prefix: str,
    bad: list[Violation],
    senders: Collection[str] | None = None,
) -> MessageQuery:
    to = None
    if req.to:
        number, _, problem = parse_recipient(req.to, None)
        if problem:
            bad.append(Violation(f"{prefix}to", problem))
        to = number
    if req.tag and not _TAG.match(req.tag):
        bad.append(Violation(f"{prefix}tag", "1-64 characters: letters, digits and _-.:/"))
    if req.sender:
        check_sender(req.sender, senders, f"{prefix}sender", bad)
    after, before = req.created_after_ms, req.created_before_ms
    if after is not None and before is not None and after >= before:
        bad.append(Violation(f"{prefix}created_before", "must be later than created_after"))
    return MessageQuery(
        statuses=tuple(dict.fromkeys(req.statuses)),
        to=to,
        tag=req.tag or None,
        channel=req.channel,
        created_after_ms=after,
        created_before_ms=before,
        sender=req.sender or None,
    )


def validate_page_size(size: int, bad: list[Violation]) -> int:
    if size == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        bad.append(Violation("page_size", f"must be between 1 and {MAX_PAGE_SIZE}"))
    return size


def validate_message_id(value: str, field_name: str, bad: list[Violation]) -> None:
    if not _MESSAGE_ID.match(value):
        bad.append(Violation(field_name, "is not a message id (26 characters, 0-9 and A-Z)"))


_MESSAGE_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
