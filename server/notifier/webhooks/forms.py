"""Reading Twilio's form posts: size-limited, strictly decoded, signature-checked."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from twilio.request_validator import RequestValidator

FORM = "application/x-www-form-urlencoded"


class BadRequest(Exception):
    """Answered with ``status`` and ``message``; nothing is stored."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request, limit: int) -> ImmutableMultiDict[str, str]:
    """The posted parameters, refusing bodies over ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and (
        not declared.isascii() or not declared.isdigit() or int(declared) > limit
    ):
        raise BadRequest(413, f"body larger than {limit} bytes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM:
        raise BadRequest(400, f"expected {FORM}, got {content_type or 'no content type'}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"body larger than {limit} bytes")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(400, f"malformed form body: {type(exc).__name__}") from None
    return ImmutableMultiDict(pairs)


def public_url(configured: str, request: Request) -> str:
    """The URL Twilio called: the configured public URL with the query it was given.

    Behind a proxy the request's own host and scheme are not what Twilio signed, so
    only the query string comes from the request (our StatusCallback adds one).
    """
    parts = urlsplit(configured)
    return urlunsplit(parts._replace(query=request.url.query))


def signed_by_twilio(
    url: str, params: ImmutableMultiDict[str, str], signature: str | None, tokens: list[str]
) -> bool:
    """Checked over every parameter received, with each token (both during a rotation).

    Twilio signs the URL it called, which is the configured one: one HMAC over it
    settles nearly every request. The SDK's ``validate`` computes two for every token
    (the URL with and without its port, as Twilio's signers differ) and was 17 % of the
    sidecar's busy time under load; it runs only when the first check fails.
    """
    if not signature or not tokens:
        return False
    expected = signature.encode()
    validators = [RequestValidator(token) for token in tokens]
    if any(
        hmac.compare_digest(v.compute_signature(url, params).encode(), expected) for v in validators
    ):
        return True
    return any(v.validate(url, params, signature) for v in validators)
