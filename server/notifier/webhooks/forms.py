"""Reading Twilio's form posts: size-limited, strictly decoded, signature-checked."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import SplitResult, parse_qsl, urlsplit, urlunsplit

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import ClientDisconnect, Request
from twilio.request_validator import RequestValidator

FORM = "application/x-www-form-urlencoded"

Pairs = list[tuple[str, str]]


class BadRequest(Exception):
    """Answered with ``status`` and ``message``; nothing is stored."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request, limit: int) -> Pairs:
    """The posted parameters in the order received, refusing bodies over ``limit`` bytes
    before reading them all.

    The body is read straight from the ASGI messages (a form post is nearly always one
    message): Starlette's ``stream()`` generator and a ``MultiDict`` cost more than the
    rest of this check under load.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (
        not declared.isascii() or not declared.isdigit() or int(declared) > limit
    ):
        raise BadRequest(413, f"body larger than {limit} bytes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM:
        raise BadRequest(400, f"expected {FORM}, got {content_type or 'no content type'}")
    body = await _body(request, limit)
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(400, f"malformed form body: {type(exc).__name__}") from None


async def _body(request: Request, limit: int) -> bytes:
    """The whole body, refused as soon as it passes ``limit`` bytes."""
    receive = request.receive
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] != "http.request":
            continue
        chunk: bytes = message.get("body", b"")
        body = body + chunk if body else chunk
        if len(body) > limit:
            raise BadRequest(413, f"body larger than {limit} bytes")
        if not message.get("more_body", False):
            return body


def public_url(configured: str, request: Request) -> str:
    """The URL Twilio called: the configured public URL with the query it was given.

    Behind a proxy the request's own host and scheme are not what Twilio signed, so
    only the query string comes from the request (our StatusCallback adds one). The
    query is taken from the ASGI scope as Starlette's ``request.url`` decodes it,
    without building that URL.
    """
    query = request.scope.get("query_string", b"").decode()
    return urlunsplit(_split(configured)._replace(query=query))


@lru_cache(maxsize=16)
def _split(url: str) -> SplitResult:
    return urlsplit(url)


def signed_by_twilio(
    url: str, params: Mapping[str, str], signature: str | None, tokens: list[str]
) -> bool:
    """Checked over every parameter received, with each token (both during a rotation).

    ``params``: a plain dict (no name repeated) or an ``ImmutableMultiDict`` (names may
    repeat; each name's distinct values are signed in order, as the SDK does).

    Twilio signs the URL it called, which is the configured one: one HMAC over it
    settles nearly every request. It is computed here as the SDK's
    ``compute_signature`` does (the URL, then each name and value in sorted order,
    HMAC-SHA1, base64) without its per-parameter lookups. The SDK's ``validate``
    computes two for every token (the URL with and without its port, as Twilio's
    signers differ) and was 17 % of the sidecar's busy time under load; it runs only
    when the first check fails.
    """
    if not signature or not tokens:
        return False
    expected = signature.encode()
    message = _signing_text(url, params).encode()
    if any(
        hmac.compare_digest(base64.b64encode(hmac.digest(t.encode(), message, "sha1")), expected)
        for t in tokens
    ):
        return True
    return any(RequestValidator(t).validate(url, params, signature) for t in tokens)


def _signing_text(url: str, params: Mapping[str, str]) -> str:
    """What Twilio's signature covers: the URL, then every name and value, sorted."""
    if isinstance(params, ImmutableMultiDict):
        return url + "".join(
            name + value for name in sorted(params) for value in sorted(set(params.getlist(name)))
        )
    return url + "".join([name + params[name] for name in sorted(params)])
