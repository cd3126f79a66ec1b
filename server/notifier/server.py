"""The composition root: builds storage, the domain service, the dispatcher and the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from notifier.api.auth import Callers, auth_interceptors
from notifier.api.errors import ErrorInterceptor
from notifier.api.metrics import MetricsInterceptor
from notifier.api.service import NotifierServicer
from notifier.asgi_server import InProcessServer
from notifier.config import Settings
from notifier.dispatch.content import ContentApiConfig, ContentApiTemplates
from notifier.dispatch.dispatcher import DispatchConfig, Dispatcher
from notifier.dispatch.observer import NO_OBSERVER, DispatchObserver
from notifier.dispatch.rate_limit import RateLimiters
from notifier.dispatch.reconcile_metrics import ReconcileMetrics
from notifier.dispatch.reconciler import ReconcileConfig, Reconciler
from notifier.dispatch.twilio import TwilioConfig, TwilioProvider
from notifier.domain.bulk import BulkSender
from notifier.domain.capacity import OutboxCapacity
from notifier.domain.preflight import TemplatePreflight
from notifier.domain.service import MessageService, payload_hash
from notifier.health import StorageHealth
from notifier.metrics import OutboxSampler, ServerMetrics, metrics_http
from notifier.purger import Purger
from notifier.sidecar import Sidecar, create_sidecar, sidecar_urls
from notifier.startup import (
    StartupError,
    closed_on_failure,
    listen,
    prepare_storage,
    split_addr,
)
from notifier.status_feed import StatusFeed
from notifier.storage.engine import DUE_CHANNEL, EVENTS_CHANNEL, Database
from notifier.storage.listener import Listener
from notifier.storage.repository import Repository
from notifier.storage.send_slots import SendSlots
from notifier.telemetry import DISABLED, Telemetry
from notifier_proto.v1 import notifier_pb2, notifier_pb2_grpc

log = logging.getLogger(__name__)

# Re-exported: what callers of the composition root start and catch.
__all__ = [
    "NotifierServer",
    "Sidecar",
    "StartupError",
    "create_server",
    "create_sidecar",
    "prepare_storage",
    "sidecar_urls",
]

# With LISTEN/NOTIFY (PostgreSQL) wake-ups come as notifications; polls only bound the
# delay when one is lost, so they can be slow.
FALLBACK_POLL_SECONDS = 2.0
# Event ids a status feed jumped over stay wanted this long (PostgreSQL: a transaction
# holding a lower id may commit after a higher one).
EVENT_GAP_GRACE_SECONDS = 10.0
_SQLITE_DISPATCH_POLL_SECONDS = 0.5


def twilio_config(settings: Settings) -> TwilioConfig | None:
    """How to reach Twilio, or None without credentials."""
    if not settings.has_twilio_credentials or settings.twilio_account_sid is None:
        return None
    secret = settings.twilio_api_secret or settings.twilio_auth_token
    assert secret is not None  # has_twilio_credentials
    if not settings.twilio_whatsapp_from and not settings.twilio_messaging_service_sid:
        raise StartupError("set TWILIO_WHATSAPP_FROM or TWILIO_MESSAGING_SERVICE_SID: no sender")
    return TwilioConfig(
        account_sid=settings.twilio_account_sid,
        username=settings.twilio_api_key or settings.twilio_account_sid,
        password=secret.get_secret_value(),
        base_url=str(settings.twilio_api_base_url),
        whatsapp_from=settings.twilio_whatsapp_from,
        messaging_service_sid=settings.twilio_messaging_service_sid,
        status_callback_url=(
            str(settings.status_callback_url) if settings.status_callback_url else None
        ),
        timeout_seconds=settings.twilio_timeout_seconds,
        profiles=settings.sender_profiles,
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from NOTIFIER_TLS_CERT/KEY (checked at startup by the settings), or None for
    plaintext; with NOTIFIER_TLS_CLIENT_CA, mutual TLS: a client without a certificate
    signed by that CA is refused during the handshake."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


# -- the gRPC server ------------------------------------------------------------------


@dataclass(slots=True)
class Grace:
    """The grace period stop() was given, read by the cleanup that lets work finish."""

    seconds: float = 0.0


@dataclass(slots=True)
class NotifierServer:
    """The gRPC server with everything it runs.

    ``cleanup`` holds every cleanup, registered as each part was built and run in
    reverse by stop(): health goes NOT_SERVING, watches end, the PostgreSQL listener
    closes, running calls and sends finish together within the grace period, then the
    Twilio client, the outbox capacity and the database close.
    """

    server: grpc.aio.Server
    port: int
    health: StorageHealth
    db: Database
    cleanup: contextlib.AsyncExitStack
    grace: Grace
    dispatcher: Dispatcher | None = None
    provider: TwilioProvider | None = None
    feed: StatusFeed | None = None
    capacity: OutboxCapacity | None = None
    listener: Listener | None = None
    metrics: Metrics | None = None
    reconciler: Reconciler | None = None
    purger: Purger | None = None

    async def start(self) -> None:
        if self.metrics is not None:
            await self.metrics.start()
        await self.server.start()
        await self.health.check()
        self.health.start()
        if self.listener is not None:
            self.listener.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        if self.reconciler is not None:
            self.reconciler.start()
        if self.purger is not None:
            self.purger.start()

    async def stop(self, grace: float) -> None:
        """Refuse new calls; let running calls and sends finish within ``grace`` seconds."""
        self.grace.seconds = grace
        await self.cleanup.aclose()


@dataclass(frozen=True, slots=True)
class Storage:
    db: Database
    repository: Repository
    capacity: OutboxCapacity


async def build_storage(
    settings: Settings, telemetry: Telemetry, cleanup: contextlib.AsyncExitStack
) -> Storage:
    """The migrated database, its repository and the outbox capacity that guards it."""
    db = await prepare_storage(settings, telemetry)
    cleanup.push_async_callback(db.dispose)
    repository = Repository(
        db,
        refuse_outside_window=settings.refuse_outside_window,
        fallback=settings.fallback_policy(),
        retry=settings.retry_policy(),
    )
    cleanup.push_async_callback(repository.settle)  # before db.dispose (last in, first out)
    capacity = OutboxCapacity(repository.count_unsent, settings.outbox_capacity)
    cleanup.push_async_callback(capacity.close)
    return Storage(db, repository, capacity)


def dispatch_config(settings: Settings, db: Database) -> DispatchConfig:
    return DispatchConfig(
        concurrency=settings.dispatch_concurrency,
        lease_seconds=settings.lease_seconds,
        retry=settings.retry_policy(),
        ambiguous_policy=settings.ambiguous_policy,
        twilio_timeout_seconds=settings.twilio_timeout_seconds,
        max_claims=settings.max_claims,
        poll_seconds=FALLBACK_POLL_SECONDS if db.is_postgresql else _SQLITE_DISPATCH_POLL_SECONDS,
    )


def build_dispatcher(
    settings: Settings,
    storage: Storage,
    telemetry: Telemetry,
    cleanup: contextlib.AsyncExitStack,
    observer: DispatchObserver = NO_OBSERVER,
) -> tuple[TwilioProvider, Dispatcher] | None:
    """The Twilio client and the dispatcher sending through it; None when this process
    does not send (dispatcher disabled, or no Twilio credentials)."""
    twilio = twilio_config(settings) if settings.dispatcher_enabled else None
    if twilio is None:
        return None
    provider = TwilioProvider(twilio, telemetry.http_trace_configs())
    cleanup.push_async_callback(provider.close)
    # On PostgreSQL any number of replicas send for one sender: the limit is shared
    # through the database so that it holds for all of them together.
    shared = SendSlots(storage.db) if storage.db.is_postgresql else None
    limiters = RateLimiters(
        settings.rate_limit_per_second,
        shared=shared,
        profiles={
            name: (p.limit_key, p.rate_per_second or settings.rate_limit_per_second)
            for name, p in settings.sender_profiles.items()
        },
    )
    dispatcher = Dispatcher(
        storage.repository,
        provider,
        limiters,
        dispatch_config(settings, storage.db),
        tracer=telemetry.tracer("notifier.dispatch"),
        observer=observer,
    )
    return provider, dispatcher


@dataclass(slots=True)
class Metrics:
    """The process's metrics, the sampler keeping the outbox gauges, and /metrics
    (None when NOTIFIER_METRICS_ADDR is empty)."""

    registry: ServerMetrics
    sampler: OutboxSampler
    http: InProcessServer | None

    @property
    def url(self) -> str | None:
        return f"{self.http.url}/metrics" if self.http is not None else None

    async def start(self) -> None:
        if self.http is not None:  # the gauges are sampled only for someone to read
            self.sampler.start()
            await self.http.start()


def build_metrics(
    settings: Settings,
    storage: Storage,
    health: StorageHealth,
    counted: ServerMetrics,
    cleanup: contextlib.AsyncExitStack,
) -> Metrics:
    """Prometheus metrics of this process, served on NOTIFIER_METRICS_ADDR (bound now,
    so a busy port stops the start with a clear message)."""
    counted.storage_up.set_function(lambda: 1.0 if health.serving else 0.0)
    sampler = OutboxSampler(counted, storage.capacity.current, storage.repository.oldest_due_at)
    cleanup.push_async_callback(sampler.stop)
    http = None
    if settings.metrics_addr:
        sock = listen(settings.metrics_addr)
        cleanup.callback(sock.close)
        http = metrics_http(counted, split_addr(settings.metrics_addr)[0], sock)
        cleanup.push_async_callback(http.stop)
    return Metrics(counted, sampler, http)


def build_reconciler(
    settings: Settings,
    storage: Storage,
    provider: TwilioProvider | None,
    cleanup: contextlib.AsyncExitStack,
    registry: CollectorRegistry | None = None,
) -> Reconciler | None:
    """The reconciler, beside the dispatcher and through its Twilio client: it fetches
    the messages whose status callbacks did not come (None when this process does not
    talk to Twilio). Its counters go in ``registry`` (the process's /metrics registry),
    by default in one of their own, ``reconciler.metrics.registry``."""
    if provider is None:
        return None
    config = ReconcileConfig(
        after_seconds=settings.reconcile_after_seconds,
        give_up_seconds=settings.reconcile_give_up_seconds,
        rate_per_second=settings.reconcile_rate_per_second,
    )
    reconciler = Reconciler(storage.repository, provider, config, ReconcileMetrics(registry))
    # Stopped before the Twilio client closes and the database goes.
    cleanup.push_async_callback(reconciler.stop)
    return reconciler


def build_grpc_server(
    settings: Settings,
    address: str,
    telemetry: Telemetry,
    health: StorageHealth,
    counted: ServerMetrics | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with its interceptors, bound to ``address``; the port it got."""
    # Authentication before errors: a refused call reaches neither a handler nor storage.
    auth = auth_interceptors(settings.token_entries)
    server = grpc.aio.server(
        # Tracing first: its span then covers authentication and the error interceptor,
        # so refused calls are traced too and every status is seen.
        interceptors=[
            # Counting first (issue 13): every call is counted with the code it ended with.
            *([MetricsInterceptor(counted)] if counted is not None else []),
            *telemetry.grpc_interceptors(),
            *auth,
            ErrorInterceptor(health.report_down),
        ],
        # Without this a second server on the same port would silently share it.
        options=[("grpc.so_reuseport", 0)],
    )
    try:
        credentials = server_credentials(settings)
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {address}: {exc}") from exc
    return server, port


async def _finish_work(
    server: grpc.aio.Server, dispatcher: Dispatcher | None, grace: Grace
) -> None:
    """Refuse new calls; let running calls and sends finish, together, within the grace."""
    stopping = [server.stop(grace.seconds)]
    if dispatcher is not None:
        stopping.append(dispatcher.stop(grace.seconds))
    await asyncio.gather(*stopping)


def build_status_feed(
    settings: Settings,
    db: Database,
    repository: Repository,
    dispatcher: Dispatcher | None,
    cleanup: contextlib.AsyncExitStack,
) -> tuple[StatusFeed, Listener | None]:
    """One poller for every watch in this process and, on PostgreSQL, the listener that
    wakes it (and the dispatcher)."""
    listener = None
    if db.is_postgresql:
        # Wake-ups from every process sharing the database (other replicas, the
        # sidecar) instead of busy polling.
        listener = Listener(db.asyncpg_dsn())
        cleanup.push_async_callback(listener.close)
    # The feed reads the database, so it also sees the status callbacks a webhook
    # sidecar in another process records.
    feed = StatusFeed(
        repository,
        FALLBACK_POLL_SECONDS if db.is_postgresql else settings.watch_poll_seconds,
        gap_grace_seconds=EVENT_GAP_GRACE_SECONDS if db.is_postgresql else 0.0,
    )
    # Closed before the listener and before the gRPC server stops: watches never
    # finish on their own, so they are ended (UNAVAILABLE, reopen elsewhere) instead
    # of holding the grace period.
    cleanup.push_async_callback(feed.close)
    if listener is not None:
        listener.subscribe(EVENTS_CHANNEL, feed.wake)
        if dispatcher is not None:
            listener.subscribe(DUE_CHANNEL, dispatcher.wake)
    return feed, listener


def _nothing_to_wake() -> None:
    """Accepted messages wake no dispatcher in a process without one."""


def build_preflight(
    settings: Settings, cleanup: contextlib.AsyncExitStack, registry: CollectorRegistry
) -> TemplatePreflight:
    """Local rules only, or with NOTIFIER_TEMPLATE_CHECK=twilio also the Content API,
    with the same credentials as the Messages API."""
    if settings.template_check == "local":
        return TemplatePreflight()
    twilio = twilio_config(settings)
    if twilio is None:
        raise StartupError("NOTIFIER_TEMPLATE_CHECK=twilio needs Twilio credentials (TWILIO_*)")
    config = ContentApiConfig(
        base_url=str(settings.content_api_base_url),
        account_sid=twilio.account_sid,
        username=twilio.username,
        password=twilio.password,
        timeout_seconds=settings.twilio_timeout_seconds,
        ttl_seconds=settings.template_cache_ttl_seconds,
    )
    source = ContentApiTemplates(config, registry)
    cleanup.push_async_callback(source.close)
    return TemplatePreflight(source)


def build_servicer(
    settings: Settings,
    storage: Storage,
    dispatcher: Dispatcher | None,
    feed: StatusFeed,
    twilio: TwilioProvider | None = None,
    templates: TemplatePreflight | None = None,
) -> NotifierServicer:
    """The use cases (single sends, bulk sends, watches) behind the Notifier service."""
    on_accepted = dispatcher.wake if dispatcher is not None else _nothing_to_wake
    ttl_ms = int(settings.idempotency_ttl_hours * 3600 * 1000)
    messages = MessageService(
        storage.repository,
        idempotency_ttl_ms=ttl_ms,
        acceptance=dispatcher,
        on_accepted=on_accepted,
        admins=tuple(settings.admin_whatsapp_numbers),
        capacity=storage.capacity,
        senders=frozenset(settings.sender_profiles),
        twilio=twilio,
        templates=templates or TemplatePreflight(),
    )
    bulk = BulkSender(
        storage.repository,
        payload_hash,
        idempotency_ttl_ms=ttl_ms,
        on_accepted=on_accepted,
        capacity=storage.capacity,
        senders=frozenset(settings.sender_profiles),
        templates=templates or TemplatePreflight(),
    )
    return NotifierServicer(messages, feed, bulk, Callers(settings.token_entries))


def add_services(
    server: grpc.aio.Server, servicer: NotifierServicer, health: StorageHealth
) -> None:
    """Notifier, grpc.health.v1 and reflection (so grpcurl needs no proto files)."""
    notifier_pb2_grpc.add_NotifierServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    names = (
        notifier_pb2.DESCRIPTOR.services_by_name["Notifier"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)


async def create_server(
    settings: Settings, addr: str | None = None, telemetry: Telemetry = DISABLED
) -> NotifierServer:
    """Build the gRPC server bound to ``addr`` (port 0 picks a free one), traced by
    ``telemetry`` (by default not at all).

    Each part's cleanup goes on one exit stack as the part is built; stop() closes it,
    so everything is shut down in the reverse order (see NotifierServer). If building
    fails, what was built so far is undone the same way.
    """
    grace = Grace()
    async with closed_on_failure() as cleanup:
        storage = await build_storage(settings, telemetry, cleanup)
        counted = ServerMetrics()
        sending = build_dispatcher(settings, storage, telemetry, cleanup, counted)
        provider, dispatcher = sending if sending is not None else (None, None)
        reconciler = build_reconciler(settings, storage, provider, cleanup, counted.registry)
        health = StorageHealth(storage.repository, settings.health_interval_seconds)
        metrics = build_metrics(settings, storage, health, counted, cleanup)
        server, port = build_grpc_server(
            settings, addr or settings.grpc_addr, telemetry, health, counted
        )
        cleanup.push_async_callback(_finish_work, server, dispatcher, grace)
        feed, listener = build_status_feed(
            settings, storage.db, storage.repository, dispatcher, cleanup
        )
        templates = build_preflight(settings, cleanup, counted.registry)
        servicer = build_servicer(settings, storage, dispatcher, feed, provider, templates)
        add_services(server, servicer, health)
        purger = Purger(storage.repository, settings.lifecycle)
        cleanup.push_async_callback(purger.close)
        # Last, so it runs first: NOT_SERVING before anything else stops.
        cleanup.push_async_callback(health.stop)
        return NotifierServer(
            server=server,
            port=port,
            health=health,
            db=storage.db,
            cleanup=cleanup,
            grace=grace,
            dispatcher=dispatcher,
            provider=provider,
            feed=feed,
            capacity=storage.capacity,
            listener=listener,
            metrics=metrics,
            reconciler=reconciler,
            purger=purger,
        )
