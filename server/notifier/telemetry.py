"""OpenTelemetry tracing and trace-aware logs, configured from the standard ``OTEL_*`` variables.

One ``Telemetry`` object per process carries the tracer provider and instruments the
parts the composition root hands it: the gRPC server (interceptor), the database
engines (SQLAlchemy events), the webhook app (Starlette middleware) and the Twilio
client's aiohttp session (a trace config). Nothing is patched globally, so each part
is instrumented by the provider it was built with: tests give a server an in-memory
exporter without touching the process-wide provider, which OpenTelemetry lets a
process set only once, and servers built without telemetry stay exactly as they were.

Personal data stays out: the instrumentations used here record no request payloads,
SQL statements carry placeholders only, the Twilio URL is recorded without the account
SID, and our own spans carry ids, channels and masked numbers, never bodies, template
variables or credentials.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import grpc
import yarl
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.instrumentation.starlette import StarletteInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import get_meter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import NoOpTracerProvider, SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from notifier.domain.privacy import mask_phones_in

DEFAULT_SERVICE_NAME = "notifier"
EXPORTERS: Final = ("otlp", "console", "none")
PROTOCOLS: Final = ("grpc", "http/protobuf")
TRACEPARENT = "traceparent"

# The Twilio REST path names the account: /2010-04-01/Accounts/AC…/Messages.json.
_ACCOUNT_IN_PATH = re.compile(r"/Accounts/[^/]+")

# Server-side gRPC statuses that mean the server failed (the semantic conventions leave
# the others, the caller's mistakes, unset on a server span).
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class TelemetryConfigError(Exception):
    """An ``OTEL_*`` variable has a value this service does not support."""


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """What the ``OTEL_*`` variables ask for. Exporter details (endpoint, headers,
    certificates, timeouts, compression) are read by the exporters themselves, and
    the sampler by the SDK (``OTEL_TRACES_SAMPLER``), exactly as the specification says."""

    exporters: tuple[str, ...]
    protocol: str

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TracingConfig:
        """Default: no tracing, unless an OTLP endpoint is configured (then OTLP).

        The specification's default exporter is OTLP, but a service started with no
        collector would then log export failures forever; an endpoint is the signal
        that someone is listening.
        """
        if _flag(env.get("OTEL_SDK_DISABLED")):
            return cls((), "http/protobuf")
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        raw = env.get("OTEL_TRACES_EXPORTER") or ("otlp" if endpoint else "none")
        names = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
        unknown = [n for n in names if n not in EXPORTERS]
        if unknown:
            raise TelemetryConfigError(
                f"OTEL_TRACES_EXPORTER: unsupported {', '.join(unknown)} "
                f"(use {', '.join(EXPORTERS)})"
            )
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).strip()
        if "otlp" in names and protocol not in PROTOCOLS:
            raise TelemetryConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported {protocol!r} "
                f"(use {', '.join(PROTOCOLS)})"
            )
        return cls(tuple(n for n in names if n != "none"), protocol)


def _resource() -> Resource:
    """``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` when set, else ``notifier``."""
    try:
        version = importlib.metadata.version("notifier")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        version = "0"
    resource = Resource.create({SERVICE_VERSION: version})
    name = str(resource.attributes.get(SERVICE_NAME, ""))
    if not name or name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _otlp_exporter(protocol: str) -> SpanExporter:
    """Imported here: each exporter pulls in its transport (gRPC or HTTP) only when used."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def _account_hidden(url: yarl.URL) -> str:
    """The request URL for the client span, without the account SID (an identifier of
    the Twilio account that has no place in a trace backend), credentials or query."""
    bare = str(url.with_user(None).with_query(None).with_fragment(None))
    return _ACCOUNT_IN_PATH.sub("/Accounts/{AccountSid}", bare)


@dataclass(eq=False)
class Telemetry:
    """The tracer provider of this process and the instrumentation of its parts.

    ``provider`` None means tracing is off: every method is then a no-op, so the
    composition root wires telemetry the same way whether it is on or not.
    """

    provider: TracerProvider | None = None
    description: str = "off"  # where spans go, for the startup banner
    _engines: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    @property
    def tracer_provider(self) -> trace.TracerProvider:
        return self.provider if self.provider is not None else NoOpTracerProvider()

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name)

    def grpc_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The server interceptor that starts a SERVER span per call (continuing the
        caller's ``traceparent`` from the metadata). Put it first: it then wraps the
        error interceptor and sees the final status of every call. It records the
        method, peer and user agent, never the request, the reply or other metadata
        (so no bearer token). Health checks and reflection are left out: probes every
        few seconds would bury the calls that matter."""
        if self.provider is None:
            return []
        quiet = filters.any_of(
            filters.service_prefix("grpc.health."), filters.service_prefix("grpc.reflection.")
        )
        interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider, filter_=filters.negate(quiet)
        )
        return [interceptor]

    def instrument_engines(self, engines: Sequence[AsyncEngine]) -> None:
        """Spans for SQL statements (text with placeholders: the parameters, which hold
        numbers and bodies, are never recorded). Each engine is instrumented once."""
        if self.provider is None:
            return
        tracer = self.provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
        usage = get_meter("opentelemetry.instrumentation.sqlalchemy").create_up_down_counter(
            name="db.client.connections.usage", unit="connections"
        )
        for engine in engines:
            sync = engine.sync_engine
            if sync in self._engines:
                continue
            EngineTracer(tracer, sync, usage)  # type: ignore[no-untyped-call]
            self._engines.add(sync)

    def instrument_app(self, app: Starlette) -> None:
        """SERVER spans for the sidecar's requests (idempotent per app)."""
        if self.provider is None:
            return
        StarletteInstrumentor.instrument_app(app, tracer_provider=self.provider)

    def http_trace_configs(self) -> list[aiohttp.TraceConfig]:
        """For the Twilio client's own aiohttp session only: a CLIENT span per request,
        child of the current (send) span, with the account SID left out of its URL."""
        if self.provider is None:
            return []
        config: aiohttp.TraceConfig = create_trace_config(
            url_filter=_account_hidden, tracer_provider=self.provider
        )
        return [config]

    def shutdown(self) -> None:
        """Export what is still buffered (blocking: call it off the event loop)."""
        if self.provider is not None:
            self.provider.shutdown()


DISABLED = Telemetry()


def tracing(exporters: Sequence[SpanExporter], *, batch: bool = True) -> Telemetry:
    """Telemetry exporting to ``exporters``; ``batch=False`` exports each span as it
    ends (tests read them at once from an in-memory exporter)."""
    return _telemetry([(exporter, batch) for exporter in exporters])


def _telemetry(
    exporters: Sequence[tuple[SpanExporter, bool]], description: str = "custom exporters"
) -> Telemetry:
    provider = TracerProvider(resource=_resource())
    for exporter, batch in exporters:
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
    return Telemetry(provider, description)


def from_env(env: Mapping[str, str] | None = None) -> Telemetry:
    """Telemetry as the ``OTEL_*`` variables configure it (DISABLED when they ask for none).

    Raises TelemetryConfigError for an exporter or protocol this service lacks.
    """
    config = TracingConfig.from_env(os.environ if env is None else env)
    if not config.enabled:
        return DISABLED
    exporters: list[tuple[SpanExporter, bool]] = []
    for name in config.exporters:
        if name == "otlp":
            exporters.append((_otlp_exporter(config.protocol), True))
        else:  # console: each span as it ends, for someone watching a terminal
            exporters.append((ConsoleSpanExporter(), False))
    names = [f"otlp ({config.protocol})" if n == "otlp" else n for n in config.exporters]
    return _telemetry(exporters, ", ".join(names))


def install_global(telemetry: Telemetry) -> bool:
    """Make ``telemetry``'s provider the process-wide one (for libraries that use the
    global API). OpenTelemetry allows this once per process; later calls are ignored
    and return False instead of logging OpenTelemetry's warning."""
    if telemetry.provider is None:
        return False
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current is telemetry.provider
    trace.set_tracer_provider(telemetry.provider)
    return True


# -- trace context as the outbox and the status callbacks carry it -------------------


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or None outside any valid span.

    The API layer stores it with each message it enqueues, so the dispatcher's send
    span, possibly minutes later and in another process, continues the caller's trace.
    """
    # Outside any span (tracing off, the common case) there is nothing to carry: the
    # propagators (baggage included) would run for nothing, ~2 % of a SendMessage.
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT)


def context_from(traceparent: str | None) -> otel_context.Context:
    """A fresh context whose remote parent ``traceparent`` names: a span started in it
    continues that trace, or starts a new one when ``traceparent`` is missing or
    malformed. Nothing of the current context is kept (neither the span of whatever
    started the work nor the background work's suppression, see ``untraced``)."""
    if not traceparent:
        return otel_context.Context()
    return propagate.extract({TRACEPARENT: traceparent}, context=otel_context.Context())


@contextlib.contextmanager
def continuing(traceparent: str | None) -> Iterator[None]:
    """Make ``context_from(traceparent)`` the current context: spans started inside
    continue that trace (or start a new one), with instrumentation on even inside
    ``untraced`` background work."""
    token = otel_context.attach(context_from(traceparent))
    try:
        yield
    finally:
        otel_context.detach(token)


def _span_context(traceparent: str | None) -> trace.SpanContext | None:
    found = trace.get_current_span(context_from(traceparent)).get_span_context()
    return found if found.is_valid else None


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Run (and start tasks) outside any trace, with instrumentation off.

    For background loops (the dispatcher's claim poll, the health check, the status
    feed): a database poll every fraction of a second is noise as root spans, and a
    loop started from inside a call would otherwise put all its polls in that call's
    trace. Work that deserves a trace starts its own span in ``context_from(...)``.
    """
    token = otel_context.attach(otel_context.Context())
    try:
        with suppress_instrumentation():
            yield
    finally:
        otel_context.detach(token)


def link_current_span(traceparent: str | None, **attributes: str) -> bool:
    """Add a link from the current span to the span ``traceparent`` names.

    Used for status callbacks: they arrive in a trace of their own (Twilio does not
    propagate context), and the link leads from each one to the send it reports on.
    """
    target = _span_context(traceparent)
    if target is None:
        return False
    span = trace.get_current_span()
    if not span.is_recording():
        return False
    span.add_link(target, attributes or None)
    return True


def record_rpc_status(code: grpc.StatusCode) -> None:
    """Put the final gRPC status on the current server span.

    The error interceptor aborts with rich details (``abort_with_status``), which the
    gRPC instrumentation does not see; this records the code, and for server faults an
    error status named by the code only: the details may quote what the caller sent
    (a phone number), and spans must not.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, code.name))


SEND_KIND = SpanKind.PRODUCER


def send_span_name(channel: str) -> str:
    """``{operation} {destination}``, as the messaging conventions name spans."""
    return f"send {channel}"


def send_attributes(message_id: str, channel: str, attempt: int) -> dict[str, str | int]:
    """Messaging semantic conventions for one message handed to Twilio."""
    return {
        "messaging.system": "twilio",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": channel,
        "messaging.message.id": message_id,
        "notifier.attempt": attempt,
    }


# -- logs ----------------------------------------------------------------------------

_NO_TRACE = "-"


def install_log_context() -> None:
    """Give every log record ``trace_id`` and ``span_id`` (hex, or ``-`` outside a span).

    Done in the record factory rather than in a handler's filter so that every handler
    sees them, including ones added later (pytest's caplog, a library's own). Installed
    once per process; calling it again changes nothing.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_adds_trace_context", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.__dict__["trace_id"] = format(ctx.trace_id, "032x")
            record.__dict__["span_id"] = format(ctx.span_id, "016x")
        else:
            record.__dict__["trace_id"] = record.__dict__["span_id"] = _NO_TRACE
        return record

    factory._adds_trace_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _logfmt_value(value: str) -> str:
    if value and not any(ch in value for ch in ' ="\\\n\t'):
        return value
    return json.dumps(value, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    """One ``key=value`` line per record: time, level, logger, trace and span ids,
    message (and exception). Phone numbers that reach a message anyway (text quoted
    from elsewhere, a traceback) are masked here as a last line of defence."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        fields = [
            ("time", when.replace("+00:00", "Z")),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("trace_id", str(getattr(record, "trace_id", _NO_TRACE))),
            ("span_id", str(getattr(record, "span_id", _NO_TRACE))),
            ("msg", mask_phones_in(record.getMessage())),
        ]
        if record.exc_info:
            fields.append(("exc", mask_phones_in(self.formatException(record.exc_info))))
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields)


def configure_logging(level: str | int) -> None:
    """Process logging for ``notifier``: logfmt lines on stderr carrying trace ids."""
    install_log_context()
    handler = logging.StreamHandler()
    handler.setFormatter(LogfmtFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
