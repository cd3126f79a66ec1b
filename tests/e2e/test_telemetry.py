"""Tracing and logs through the real path: a caller's trace continues through the gRPC
server, the outbox, the dispatcher's send and the HTTP request to the Twilio emulator,
and the emulator's signed status callbacks link back to the send. No span and no log
line carries a full phone number, a message body, template variables or a secret.

Spans go to an in-memory exporter through a provider of their own (one per session),
handed to the servers built here: the process-wide provider is never needed, and
servers built by other tests stay untraced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier.server import NotifierServer, Sidecar, create_server, create_sidecar
from notifier.telemetry import (
    DISABLED,
    LogfmtFormatter,
    Telemetry,
    current_traceparent,
    install_global,
    install_log_context,
    tracing,
)
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.engine import Engine, engine_settings

TO = "+14155550100"
FAILS_AT_SEND = "+14155550111"  # the emulator answers 21211
FAILS_LATER = "+14155550122"  # accepted, then an "undelivered" callback
BODY = "Your one-time code is 918273, do not share it"
VARIABLES = {"1": "Ana Lovelace-Secret", "2": "order 55-XY-secret"}
BEARER = "Bearer tok_live_5f1c0ffee0ddba11"
STATUS_ROUTE = "/api/v1/whatsapp/status"


@pytest.fixture(scope="session")
def session_spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="session")
def telemetry(session_spans: InMemorySpanExporter) -> Telemetry:
    """One provider for the session; each span exported as it ends."""
    install_log_context()
    return tracing([session_spans], batch=False)


@pytest.fixture
def spans(session_spans: InMemorySpanExporter, telemetry: Telemetry) -> InMemorySpanExporter:
    session_spans.clear()
    return session_spans


@dataclass
class Stack:
    engine: Engine
    server: NotifierServer
    channel: grpc.aio.Channel
    sidecar: Sidecar


@pytest.fixture
async def stack(
    db_path: Path, emulator: EmulatorServer, telemetry: Telemetry
) -> AsyncIterator[Stack]:
    """Sidecar, gRPC server and dispatcher, traced, with the emulator calling the sidecar."""
    settings = engine_settings(
        db_path, emulator, STATUS_CALLBACK_URL=None, NOTIFIER_HTTP_ADDR="127.0.0.1:0"
    )
    sidecar, settings = await create_sidecar(settings, telemetry=telemetry)
    await sidecar.start()
    server = await create_server(settings, telemetry=telemetry)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield Stack(Engine(server, channel), server, channel, sidecar)
    await channel.close()
    await server.stop(grace=1)
    await sidecar.stop()


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


async def _finished(
    spans: InMemorySpanExporter, count: int, which: Any, within: float = 10
) -> list[ReadableSpan]:
    """Wait until ``count`` finished spans match ``which`` (callbacks end after replies)."""
    deadline = time.monotonic() + within
    while True:
        found = [s for s in spans.get_finished_spans() if which(s)]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            names = sorted({s.name for s in spans.get_finished_spans()})
            raise AssertionError(f"{len(found)} of {count} spans; finished: {names}")
        await asyncio.sleep(0.02)


def _is_callback(span: ReadableSpan) -> bool:
    return span.kind is SpanKind.SERVER and STATUS_ROUTE in span.name


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_send_is_one_connected_trace_and_callbacks_link_to_the_send(
    stack: Stack, spans: InMemorySpanExporter, telemetry: Telemetry
) -> None:
    with telemetry.tracer("tests.caller").start_as_current_span(
        "checkout", kind=SpanKind.CLIENT
    ) as caller:
        traceparent = current_traceparent()
        assert traceparent is not None
        reply = await stack.engine.stub.SendMessage(
            pb.SendMessageRequest(to=TO, body=BODY), metadata=(("traceparent", traceparent),)
        )
    await stack.engine.until_status(reply.message_id, pb.MESSAGE_STATUS_READ)
    callbacks = await _finished(spans, 3, _is_callback)  # sent, delivered, read
    finished = spans.get_finished_spans()
    caller_ctx = caller.get_span_context()
    trace_id = caller_ctx.trace_id

    # The gRPC server span continues the caller's trace from the metadata.
    (rpc,) = [s for s in finished if s.name == "/notifier.v1.Notifier/SendMessage"]
    assert rpc.kind is SpanKind.SERVER
    assert rpc.context.trace_id == trace_id
    assert rpc.parent is not None
    assert rpc.parent.is_remote
    assert _parent(rpc) == caller_ctx.span_id
    assert rpc.attributes is not None
    assert rpc.attributes["rpc.system"] == "grpc"
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]

    # Storing the message is database work inside the call (SQLAlchemy spans).
    stored = [s for s in finished if _parent(s) == rpc.context.span_id]
    inserts = [s for s in stored if "INSERT INTO messages" in str(s.attributes.get("db.statement"))]  # type: ignore[union-attr]
    assert inserts
    assert all(s.context.trace_id == trace_id for s in inserts)
    assert all("VALUES (?, ?" in str((s.attributes or {})["db.statement"]) for s in inserts)

    # The dispatcher's send continues the trace stored with the message (the call's).
    (send,) = [s for s in finished if s.name == "send whatsapp"]
    assert send.kind is SpanKind.PRODUCER
    assert send.context.trace_id == trace_id
    assert _parent(send) == rpc.context.span_id
    assert send.attributes is not None
    assert {k: send.attributes[k] for k in send.attributes if k.startswith("messaging.")} == {
        "messaging.system": "twilio",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "whatsapp",
        "messaging.message.id": reply.message_id,
    }
    assert send.attributes["notifier.attempt"] == 1
    assert str(send.attributes["notifier.twilio.sid"]).startswith("SM")

    # The HTTP request to Twilio (the emulator) is the send's child.
    (http,) = [s for s in finished if _parent(s) == send.context.span_id and s.name == "POST"]
    assert http.kind is SpanKind.CLIENT
    assert http.context.trace_id == trace_id
    assert http.attributes is not None
    url = str(http.attributes.get("http.url") or http.attributes.get("url.full"))
    assert url.endswith("/2010-04-01/Accounts/{AccountSid}/Messages.json")
    # Recording the outcome is database work under the send as well.
    assert any(
        "UPDATE messages" in str((s.attributes or {}).get("db.statement"))
        for s in finished
        if _parent(s) == send.context.span_id
    )

    # Background polls (claims, health, status feed) are no traces of their own, and
    # health checks are not traced.
    roots = [s for s in finished if s.parent is None and s.kind is not SpanKind.SERVER]
    assert [s.name for s in roots] == ["checkout"]  # the caller's own span only
    assert not [s.name for s in finished if "grpc.health" in s.name]

    # Each status callback is a request of its own (Twilio propagates no context), and
    # links to the send it reports on.
    for callback in callbacks:
        assert callback.parent is None
        assert [(link.context.trace_id, link.context.span_id) for link in callback.links] == [
            (trace_id, send.context.span_id)
        ]


async def test_a_send_without_a_caller_trace_starts_one_at_the_call(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    reply = await stack.engine.stub.SendMessage(pb.SendMessageRequest(to=TO, body=BODY))
    # Handed to Twilio: it has Twilio's SID (callbacks may already have moved it past QUEUED).
    await stack.engine.until(reply.message_id, lambda s: bool(s.message.twilio_sid))
    (send,) = await _finished(spans, 1, lambda s: s.name == "send whatsapp")
    (rpc,) = [
        s for s in spans.get_finished_spans() if s.name == "/notifier.v1.Notifier/SendMessage"
    ]
    assert rpc.parent is None
    assert send.context.trace_id == rpc.context.trace_id
    assert _parent(send) == rpc.context.span_id


async def test_bulk_and_admin_notifications_store_the_calls_trace(
    db_path: Path, emulator: EmulatorServer, telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    settings = engine_settings(
        db_path, emulator, ADMIN_WHATSAPP_NUMBERS=TO, NOTIFIER_DISPATCHER_ENABLED="false"
    )
    server = await create_server(settings, telemetry=telemetry)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = notifier_pb2_grpc.NotifierStub(channel)
            item = pb.BulkItem(correlation_id="a", to=TO, body=BODY)
            results = [r async for r in stub.SendBulk(iter([pb.SendBulkRequest(items=[item])]))]
            custom = pb.CustomNotification(title="Heads up", body=BODY)
            notified = await stub.NotifyAdmins(pb.NotifyAdminsRequest(custom=custom))
    finally:
        await server.stop(grace=1)
    bulk_id = results[0].results[0].accepted.message_id
    admin_id = notified.deliveries[0].message_id
    rows = await asyncio.to_thread(_traceparents, db_path, [bulk_id, admin_id])
    for method, mid in (("SendBulk", bulk_id), ("NotifyAdmins", admin_id)):
        (rpc,) = [
            s for s in spans.get_finished_spans() if s.name == f"/notifier.v1.Notifier/{method}"
        ]
        ctx = rpc.context
        flags = _hex(int(ctx.trace_flags), 2)  # sampled (and random, W3C level 2)
        expected = f"00-{_hex(ctx.trace_id, 32)}-{_hex(ctx.span_id, 16)}-{flags}"
        assert rows[mid] == expected


def _traceparents(db_path: Path, ids: Sequence[str]) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        marks = ",".join("?" * len(ids))
        query = f"SELECT id, traceparent FROM messages WHERE id IN ({marks})"  # noqa: S608
        return dict(conn.execute(query, list(ids)).fetchall())


def _texts_of(finished: Sequence[ReadableSpan]) -> Iterator[str]:
    """Everything a trace backend would store about these spans, as text."""
    for span in finished:
        yield span.name
        if span.status.description:
            yield span.status.description
        for key, value in (span.attributes or {}).items():
            yield f"{key}={value!s}"
        for event in span.events:
            yield event.name
            yield from (f"{k}={v!s}" for k, v in (event.attributes or {}).items())
        for link in span.links:
            yield from (f"{k}={v!s}" for k, v in (link.attributes or {}).items())
        yield from (f"{k}={v!s}" for k, v in span.resource.attributes.items())


def _log_texts(records: Sequence[logging.LogRecord]) -> Iterator[str]:
    formatter = logging.Formatter()
    for record in records:
        yield record.getMessage()
        if record.exc_info:
            yield formatter.formatException(record.exc_info)
        if record.stack_info:
            yield record.stack_info


async def test_no_personal_data_or_secret_in_spans_or_logs(
    stack: Stack,
    emulator: EmulatorServer,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.faults = Faults(
        to_errors={FAILS_AT_SEND: 21211}, to_outcomes={FAILS_LATER: ("undelivered", 30008)}
    )
    stub = stack.engine.stub
    auth = (("authorization", BEARER),)
    ok = await stub.SendMessage(
        pb.SendMessageRequest(to=TO, body=BODY, tags=["otp"]), metadata=auth
    )
    template = await stub.SendMessage(
        pb.SendMessageRequest(to=TO, content_sid="HX" + "ab" * 16, variables=VARIABLES),
        metadata=auth,
    )
    refused = await stub.SendMessage(
        pb.SendMessageRequest(to=FAILS_AT_SEND, body=BODY), metadata=auth
    )
    undelivered = await stub.SendMessage(
        pb.SendMessageRequest(to=FAILS_LATER, body=BODY), metadata=auth
    )
    # Bad input: the caller's own (invalid) number comes back to the caller, not to spans.
    invalid_to = "+1415555010"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.SendMessage(pb.SendMessageRequest(to=invalid_to, body=BODY), metadata=auth)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # A forged callback naming numbers and a body: refused, and nothing of it logged.
    async with httpx.AsyncClient(base_url=stack.sidecar.url) as http:
        forged = await http.post(
            STATUS_ROUTE,
            data={"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered", "To": TO},
            headers={"X-Twilio-Signature": "forged"},
        )
    assert forged.status_code == 403

    engine = stack.engine
    await engine.until_status(ok.message_id, pb.MESSAGE_STATUS_READ)
    await engine.until_status(template.message_id, pb.MESSAGE_STATUS_READ)
    failed = await engine.until_status(refused.message_id, pb.MESSAGE_STATUS_FAILED)
    assert failed.message.error_code == 21211
    await engine.until_status(undelivered.message_id, pb.MESSAGE_STATUS_UNDELIVERED)
    await _finished(spans, 8, _is_callback)  # 3 + 3 + 2 signed callbacks, plus the forged one

    finished = spans.get_finished_spans()
    secrets = {
        "full phone number": TO,
        "failing number": FAILS_AT_SEND,
        "undelivered number": FAILS_LATER,
        "invalid number": invalid_to,
        "national digits": TO[2:],
        "body": BODY,
        "template variable": VARIABLES["1"],
        "other variable": VARIABLES["2"],
        "Twilio auth token": emulator.auth_token,
        "bearer token": BEARER.split()[1],
    }
    span_texts = list(_texts_of(finished))
    log_texts = list(_log_texts(caplog.records))
    assert len(span_texts) > 100  # the flows really ran
    assert len(log_texts) > 5
    for what, secret in secrets.items():
        assert not [t for t in span_texts if secret in t], f"{what} in a span"
        assert not [t for t in log_texts if secret in t], f"{what} in a log line"

    # The refused send is an error on its span, named by kind and code only.
    (refusal,) = [
        s
        for s in finished
        if s.name == "send whatsapp"
        and (s.attributes or {}).get("messaging.message.id") == refused.message_id
    ]
    assert refusal.status.status_code is trace.StatusCode.ERROR
    assert refusal.status.description == "permanent (21211)"
    assert (refusal.attributes or {})["error.type"] == "21211"
    # The bad request: the status code on the server span, which the caller's error is not.
    (invalid,) = [
        s
        for s in finished
        if s.name == "/notifier.v1.Notifier/SendMessage"
        and (s.attributes or {})["rpc.grpc.status_code"] != 0
    ]
    assert (invalid.attributes or {})["rpc.grpc.status_code"] == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0]
    )
    assert invalid.status.status_code is trace.StatusCode.UNSET

    # Every record carries trace ids; those logged inside a span carry that span's.
    assert all(hasattr(r, "trace_id") and hasattr(r, "span_id") for r in caplog.records)
    (attempt_log,) = [
        r
        for r in caplog.records
        if r.getMessage().startswith(f"attempt 1 for {refused.message_id}")
    ]
    assert attempt_log.__dict__["trace_id"] == _hex(refusal.context.trace_id, 32)
    assert attempt_log.__dict__["span_id"] == _hex(refusal.context.span_id, 16)
    (forged_log,) = [r for r in caplog.records if "refused a webhook request" in r.getMessage()]
    (forged_span,) = [
        s
        for s in finished
        if _is_callback(s) and (s.attributes or {}).get("http.status_code") == 403
    ]
    assert forged_log.__dict__["trace_id"] == _hex(forged_span.context.trace_id, 32)


def test_log_lines_are_logfmt_with_trace_ids_and_masked_numbers(telemetry: Telemetry) -> None:
    install_log_context()
    logger = logging.getLogger("tests.telemetry")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        with telemetry.tracer("tests").start_as_current_span("work") as span:
            logger.warning("Twilio said: The 'To' number %s is not valid", TO)
        logger.warning("outside any span")
    finally:
        logger.removeHandler(handler)
    inside, outside = (LogfmtFormatter().format(r) for r in records)
    ctx = span.get_span_context()
    assert f"trace_id={_hex(ctx.trace_id, 32)} span_id={_hex(ctx.span_id, 16)}" in inside
    assert "level=warning logger=tests.telemetry" in inside
    assert "msg=\"Twilio said: The 'To' number +1•••0100 is not valid\"" in inside
    assert "trace_id=- span_id=-" in outside


async def test_instrumenting_twice_changes_nothing(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    """An engine handed over again is not traced twice (one span per statement)."""
    engine = create_async_engine("sqlite+aiosqlite://")
    telemetry.instrument_engines([engine, engine])
    telemetry.instrument_engines([engine])
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    assert [(s.attributes or {}).get("db.statement") for s in spans.get_finished_spans()] == [
        "SELECT 1"
    ]
    assert DISABLED.grpc_interceptors() == []
    assert DISABLED.http_trace_configs() == []


def test_the_global_provider_is_set_once_and_kept(telemetry: Telemetry) -> None:
    """OpenTelemetry allows one global provider per process: the first one stays."""
    assert install_global(DISABLED) is False
    first = install_global(telemetry)
    assert install_global(telemetry) is first  # the same provider again: no change
    other = tracing([InMemorySpanExporter()], batch=False)
    assert install_global(other) is False
    assert trace.get_tracer_provider() is not other.provider
