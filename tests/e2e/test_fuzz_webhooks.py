"""Property: whatever reaches the webhook sidecar, it answers without a 5xx, and a forged
or refused request stores nothing.

Bodies and headers are generated: form parameters Twilio sends and random ones, missing
and repeated fields, odd unicode, huge values, numbers that are not numbers, other
encodings and raw bytes, wrong and missing content types, chunked bodies, and
signatures that are valid (either token of a rotation), forged, for another URL, or
absent. The sidecar runs on a real port from a loop in a thread, over a real SQLite file,
for the whole module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.datastructures import ImmutableMultiDict
from twilio.request_validator import RequestValidator

from notifier.asgi_server import InProcessServer
from notifier.config import load_settings
from notifier.domain.inbound import Keywords
from notifier.server import prepare_storage
from notifier.storage.engine import Database
from notifier.storage.repository import Repository
from notifier.webhooks.app import WebhookConfig, create_webhook_app
from tests.support.background import LoopThread, table_counts
from tests.support.webhooks import INBOUND_URL, OLD_TOKEN, SID, STATUS_URL, TOKEN, queued_message

STATUS_PATH = "/api/v1/whatsapp/status"
INBOUND_PATH = "/api/v1/whatsapp/webhook"
MAX_BYTES = 8192
FORM = "application/x-www-form-urlencoded"
EXAMPLES = 300
SEEN: Counter[tuple[str, int]] = Counter()  # (path, HTTP status): printed at the end


@dataclass
class Sidecar:
    client: httpx.Client
    db_path: Path
    message_id: str


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    db_path = tmp_path_factory.mktemp("webhook-fuzz") / "notifier.db"
    settings = load_settings(
        NOTIFIER_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}", NOTIFIER_LOG_LEVEL="WARNING"
    )
    loop = LoopThread()
    db: Database = loop.run(prepare_storage(settings))
    repo = Repository(db)
    config = WebhookConfig(
        status_url=STATUS_URL,
        inbound_url=INBOUND_URL,
        status_path=STATUS_PATH,
        inbound_path=INBOUND_PATH,
        tokens=[TOKEN, OLD_TOKEN],
        max_bytes=MAX_BYTES,
        keywords=Keywords(frozenset({"STOP"}), frozenset({"START"})),
    )
    http = InProcessServer(create_webhook_app(repo, config))
    loop.run(http.start())
    mid = loop.run(queued_message(repo))
    try:
        with httpx.Client(base_url=http.url, timeout=30) as client:
            yield Sidecar(client, db_path, mid)
    finally:
        print("\nanswers to fuzzed webhook requests:")
        for (path, status), n in sorted(SEEN.items()):
            print(f"  {path:28} {status} {n}")
        loop.run(http.stop())
        loop.run(db.dispose())
        loop.close()


NO_SURROGATES: list[Literal["Cs"]] = ["Cs"]
KNOWN_NAMES = [
    "MessageSid",
    "SmsSid",
    "MessageStatus",
    "SmsStatus",
    "AccountSid",
    "From",
    "To",
    "Body",
    "ErrorCode",
    "ErrorMessage",
    "NumMedia",
    "MediaUrl0",
    "MediaContentType0",
    "ProfileName",
    "WaId",
    "EventType",
    "ApiVersion",
]
STATUS_WORDS = ["queued", "sent", "delivered", "read", "READ", "failed", "undelivered", "receiving"]
ODD_VALUES = [
    "",
    " ",
    "\x00",
    SID,
    "SM" + "f" * 32,
    "SM" + "1" * 200,
    "queued",
    "sent",
    "delivered",
    "read",
    "READ",
    "failed",
    "undelivered",
    "receiving",
    "canceled",
    "0",
    "-1",
    "30003",
    "63016",
    "99999999999999999999999",
    "whatsapp:+14155550100",
    "whatsapp:",
    "+14155550100",
    "STOP",
    "start",
    "\u202eevil",
    "\U0001f984",
    "x" * 5000,
]
# Bytes HTTP/1.1 allows in a header value (h11 refuses to send others): visible ASCII,
# inner spaces and tabs, and obs-text (0x80-0xFF, read as Latin-1 by the server).
HEADER_BYTES = [b for b in range(256) if 0x21 <= b <= 0x7E or b >= 0x80 or b in (0x20, 0x09)]
header_values = st.lists(st.sampled_from(HEADER_BYTES), max_size=40).map(
    lambda bs: bytes(bs).strip(b" \t")
)
NUMBERS = [
    "",
    "0",
    "-1",
    "1",
    "10",
    "11",
    "30003",
    "63016",
    "2147483647",
    "4294967296",
    "9223372036854775808",
    "99999999999999999999999",
    "\u0661\u0662\u0663",  # Arabic-Indic digits: isdigit() but not ASCII
    "\u00b2",  # superscript two: isdigit(), int() refuses it
    "1e3",
    " 5",
]
names = st.one_of(st.sampled_from(KNOWN_NAMES), st.text(max_size=12))
values = st.one_of(
    st.sampled_from(ODD_VALUES), st.text(st.characters(exclude_categories=NO_SURROGATES))
)
pairs = st.lists(st.tuples(names, values), max_size=12)


@st.composite
def callbacks(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Mostly Twilio-shaped forms, with fields dropped, changed, repeated or added."""
    base = [
        ("MessageSid", SID),
        ("MessageStatus", draw(st.sampled_from(STATUS_WORDS))),
        ("From", "whatsapp:+14155550100"),
        ("To", "whatsapp:+14155238886"),
        ("Body", "hi"),
    ]
    kept = [p for p in base if draw(st.integers(0, 9)) > 0]
    if draw(st.booleans()):
        numeric = st.one_of(st.sampled_from(NUMBERS), st.integers(-(2**70), 2**70).map(str))
        kept.append(("ErrorCode", draw(numeric)))
    if draw(st.booleans()):
        kept.append(
            (
                "NumMedia",
                draw(st.one_of(st.sampled_from(NUMBERS), st.integers(-(2**70), 2**70).map(str))),
            )
        )
    taken = {name for name, _ in kept}
    extra = draw(st.dictionaries(names, values, max_size=4))
    if draw(st.integers(0, 9)) == 0:  # now and then a repeated or replaced field
        return kept + list(extra.items())
    return kept + [(k, v) for k, v in extra.items() if k not in taken]


@dataclass(frozen=True)
class Request:
    path: str
    query: str
    body: bytes | Iterator[bytes]
    headers: list[tuple[bytes, bytes]]
    signed: bool  # the signature is Twilio's, over exactly what the server will parse


@st.composite
def requests(draw: st.DrawFn) -> Request:
    inbound = draw(st.booleans())
    path, url = (INBOUND_PATH, INBOUND_URL) if inbound else (STATUS_PATH, STATUS_URL)
    query = draw(
        st.sampled_from(["", "message_id=01J00000000000000000000000", "message_id=", "a=%FF"])
    )
    # Half the requests are Twilio-shaped and validly signed, so the fuzzing reaches the
    # handlers and storage; the other half vary everything.
    shaped = draw(st.booleans())
    form = draw(callbacks()) if shaped else draw(st.one_of(callbacks(), pairs))
    encoding = "utf-8" if shaped else draw(st.sampled_from(["utf-8", "latin-1", "utf-16", "raw"]))
    if encoding == "raw":
        body = draw(st.binary(max_size=300))
    else:
        body = urlencode(form).encode("utf-8")
        if encoding != "utf-8":
            body = urlencode(form, encoding=encoding, errors="replace").encode("ascii")
    if not shaped and draw(st.integers(0, 9)) == 0:
        body += b"&Body=" + b"x" * (MAX_BYTES + 1)  # over the limit
    content_type = (
        FORM
        if shaped
        else draw(
            st.sampled_from(
                [
                    FORM,
                    FORM,
                    FORM,
                    FORM + "; charset=utf-8",
                    "APPLICATION/X-WWW-FORM-URLENCODED",
                    "application/json",
                    "text/plain",
                    "multipart/form-data; boundary=x",
                    "",
                    None,
                ]
            )
        )
    )
    full_url = f"{url}?{query}" if query else url
    forgeries = ["wrong", "url", "garbage", "none"]
    kind = draw(st.sampled_from(["valid", "old"] if shaped else ["valid", "old", *forgeries]))
    token = {"old": OLD_TOKEN, "wrong": "c" * 32}.get(kind, TOKEN)
    signed_url = "https://evil.example.com" + path if kind == "url" else full_url
    parsed = _as_server_parses(body)
    signature = RequestValidator(token).compute_signature(signed_url, parsed or {})
    headers: list[tuple[str, str | bytes]] = []
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if kind == "garbage":
        headers.append(("X-Twilio-Signature", draw(header_values)))
    elif kind != "none":
        headers.append(("X-Twilio-Signature", signature))
        if not shaped and draw(st.integers(0, 9)) == 0:
            headers.append(("X-Twilio-Signature", "bm90IGEgc2lnbmF0dXJl"))
    extra = st.tuples(st.sampled_from(["X-Forwarded-Host", "Host-ish", "X-Odd"]), header_values)
    headers += draw(st.lists(extra, max_size=2))
    chunked = draw(st.integers(0, 4)) == 0
    content: bytes | Iterator[bytes] = iter([body[:10], body[10:]]) if chunked else body
    valid = (
        kind in ("valid", "old")
        and parsed is not None
        and content_type is not None
        and content_type.split(";")[0].strip().lower() == FORM
        and len(body) <= MAX_BYTES
    )
    raw_headers = [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in headers]
    return Request(path, query, content, raw_headers, valid)


def _as_server_parses(body: bytes) -> ImmutableMultiDict[str, str] | None:
    """The parameters the sidecar reads from ``body``, None where it must refuse it."""
    try:
        text = body.decode("utf-8")
        return ImmutableMultiDict(
            parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
        )
    except (UnicodeDecodeError, ValueError):
        return None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
def _never_5xx_and_refused_stores_nothing(sidecar: Sidecar, request: Request) -> None:
    before = table_counts(sidecar.db_path)
    path = request.path + (f"?{request.query}" if request.query else "")
    reply = sidecar.client.post(path, content=request.body, headers=request.headers)
    after = table_counts(sidecar.db_path)
    SEEN[request.path, reply.status_code] += 1
    assert reply.status_code < 500, reply.text
    if not request.signed:
        assert reply.status_code in (400, 403, 413), reply.text
    if reply.status_code != 200:
        assert after == before, f"refused with {reply.status_code} but stored rows"
    # Neither webhook ever creates or removes a message.
    assert after["messages"] == before["messages"]
    if request.path == STATUS_PATH:
        assert after["inbound_messages"] == before["inbound_messages"]


def test_fuzzed_webhooks_never_5xx_and_refusals_store_nothing(sidecar: Sidecar) -> None:
    _never_5xx_and_refused_stores_nothing(sidecar)


def test_sidecar_still_works_after_the_fuzzing(sidecar: Sidecar) -> None:
    """The fuzzing left the app answering, and the signed callback path still applies."""
    params = {"MessageSid": SID, "MessageStatus": "sent", "To": "whatsapp:+14155550100"}
    url = f"{STATUS_URL}?message_id={sidecar.message_id}"
    signature = RequestValidator(TOKEN).compute_signature(url, params)
    reply = sidecar.client.post(
        f"{STATUS_PATH}?message_id={sidecar.message_id}",
        content=urlencode(params),
        headers={"Content-Type": FORM, "X-Twilio-Signature": signature},
    )
    assert reply.status_code == 200
    assert sidecar.client.get("/healthz").status_code == 200


def test_error_code_past_int32_is_refused(sidecar: Sidecar) -> None:
    """Found by fuzzing: a signed callback with ErrorCode 9223372036854775808 was a 500
    (the insert overflowed), and 4294967296 was stored and then broke every
    GetDeliveryStatus of the message (error_code is an int32 in the proto)."""
    for code in ("9223372036854775808", "4294967296"):
        before = table_counts(sidecar.db_path)
        params = {"MessageSid": SID, "MessageStatus": "failed", "ErrorCode": code}
        signature = RequestValidator(TOKEN).compute_signature(STATUS_URL, params)
        reply = sidecar.client.post(
            STATUS_PATH,
            content=urlencode(params),
            headers={"Content-Type": FORM, "X-Twilio-Signature": signature},
        )
        assert reply.status_code == 400
        assert "ErrorCode" in reply.text
        assert table_counts(sidecar.db_path) == before
