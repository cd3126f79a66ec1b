"""``notifier``: run the service and manage its database."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from pydantic import AnyHttpUrl, SecretStr, ValidationError
from sqlalchemy.engine import make_url

from notifier.config import ConfigError, Settings, load_settings
from notifier.domain.access import describe
from notifier.domain.model import DEFAULT_SENDER
from notifier.emulator import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, DEV_FROM
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer, run_emulator
from notifier.heap import settle_heap
from notifier.production import report, startup_problems
from notifier.server import StartupError, create_server, create_sidecar, sidecar_urls
from notifier.storage.engine import create_database
from notifier.storage.migrate import upgrade
from notifier.telemetry import (
    Telemetry,
    TelemetryConfigError,
    configure_logging,
    from_env,
    install_global,
)

log = logging.getLogger("notifier")


def _safe_url(url: str) -> str:
    """The database URL without its password, for printing."""
    return make_url(url).render_as_string(hide_password=True)


def _safe_base(url: AnyHttpUrl) -> str:
    """Twilio's base URL without any user:password in it, for printing."""
    port = f":{url.port}" if url.port not in (None, 80, 443) else ""
    return f"{url.scheme}://{url.host}{port}"


def _security(settings: Settings) -> list[str]:
    """How callers are authenticated and the transport protected; never a secret."""
    lines = []
    if settings.auth_enabled:
        entries = settings.token_entries
        # Names and scopes only: never a digest (nor any part of one).
        names = ", ".join(describe(e) for e in entries)
        lines.append(
            f"notifier: callers authenticate with bearer tokens ({len(entries)} accepted: {names})"
        )
    else:
        lines.append(
            "notifier: *** CALLER AUTHENTICATION OFF - no NOTIFIER_API_TOKENS (development "
            "only): any process that reaches this address may call it ***"
        )
    if settings.tls_client_ca is not None:
        lines.append("notifier: mutual TLS: clients need a certificate from NOTIFIER_TLS_CLIENT_CA")
    elif settings.tls_enabled:
        lines.append("notifier: TLS on (NOTIFIER_TLS_CERT)")
    elif settings.tls_terminated_upstream:
        lines.append("notifier: plaintext gRPC; TLS terminated upstream")
    else:
        lines.append("notifier: plaintext gRPC (no NOTIFIER_TLS_CERT)")
    return lines


def _banner(settings: Settings, port: int, emulator: EmulatorServer | None) -> str:
    host = settings.grpc_addr.rpartition(":")[0]
    lines = []
    if emulator is not None:
        lines.append(
            f"notifier: *** TWILIO EMULATOR at {emulator.url} - no TWILIO_* credentials set, "
            "so no real WhatsApp or SMS message leaves this machine ***"
        )
    elif settings.has_twilio_credentials:
        sender = settings.twilio_messaging_service_sid or settings.twilio_whatsapp_from
        base = _safe_base(settings.twilio_api_base_url)
        lines.append(f"notifier: sending through {base} as {sender}")
    named = [n for n in settings.sender_profiles if n != DEFAULT_SENDER]
    if named:
        lines.append(f"notifier: sender profiles: default, {', '.join(named)}")
    lines += _security(settings)
    lines.append(f"notifier: gRPC serving on {host}:{port} ({settings.env})")
    return "\n".join(lines)


async def _start_emulator(settings: Settings) -> EmulatorServer:
    host, _, port = settings.emulator_addr.rpartition(":")
    emulator = EmulatorServer(host=host, port=int(port))
    try:
        await emulator.start()
    except OSError as exc:
        raise StartupError(
            f"cannot start the Twilio emulator on {settings.emulator_addr} ({exc.strerror}): "
            "set NOTIFIER_EMULATOR_ADDR to a free address"
        ) from exc
    return emulator


def _use_emulator(settings: Settings, emulator: EmulatorServer) -> Settings:
    return settings.model_copy(
        update={
            "twilio_account_sid": emulator.account_sid,
            "twilio_auth_token": SecretStr(emulator.auth_token),
            "twilio_whatsapp_from": DEV_FROM,
            "twilio_api_base_url": AnyHttpUrl(emulator.url),
            "content_api_base_url": AnyHttpUrl(emulator.url),
        }
    )


async def _serve(settings: Settings, part: str, telemetry: Telemetry) -> int:
    """``all`` (development): sidecar, gRPC server and, without credentials, the emulator."""
    problems = startup_problems(settings, part)
    if problems:
        raise StartupError(report(problems, settings.env))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as running:
        # Registered first, so it runs last: spans of the shutdown itself are exported too.
        running.push_async_callback(asyncio.to_thread, telemetry.shutdown)
        emulator = None
        if part != "webhooks" and not settings.has_twilio_credentials:
            if not settings.is_development:
                raise StartupError(
                    "production needs Twilio credentials: set TWILIO_ACCOUNT_SID and "
                    "TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET)"
                )
            emulator = await _start_emulator(settings)
            running.push_async_callback(emulator.stop)
            settings = _use_emulator(settings, emulator)
        if part == "webhooks" and not settings.webhook_tokens and settings.is_development:
            log.warning("no TWILIO_AUTH_TOKEN: accepting webhooks signed for the emulator")
            settings = settings.model_copy(update={"twilio_auth_token": SecretStr(DEV_AUTH_TOKEN)})
        lines = [
            f"notifier: database {_safe_url(settings.database_url)}",
            f"notifier: tracing {telemetry.description} (OTEL_TRACES_EXPORTER)",
        ]
        if part in ("all", "webhooks"):
            sidecar, settings = await create_sidecar(settings, telemetry=telemetry)
            await sidecar.start()
            running.push_async_callback(sidecar.stop)
            lines.append(f"notifier: webhooks serving on {sidecar.url}")
        elif settings.status_callback_url is None and settings.is_development:
            settings = sidecar_urls(settings, f"http://{settings.http_addr}")
        if part in ("all", "grpc"):
            notifier = await create_server(settings, telemetry=telemetry)
            await notifier.start()
            grace = settings.shutdown_grace_seconds
            running.push_async_callback(notifier.stop, grace)
            lines.append(_banner(settings, notifier.port, emulator))
            url = notifier.metrics.url if notifier.metrics is not None else None
            lines.append(f"notifier: Prometheus metrics at {url or 'off (NOTIFIER_METRICS_ADDR)'}")
        settle_heap()
        print("\n".join(lines), flush=True)
        await stop.wait()
        log.info(
            "shutting down: finishing work in flight (grace %.1fs)", settings.shutdown_grace_seconds
        )
    print("notifier: stopped", flush=True)
    return 0


async def _db_upgrade(settings: Settings) -> int:
    db = create_database(settings.database_url)
    try:
        await upgrade(db.writer)
    finally:
        await db.dispose()
    print(f"notifier: database at the latest schema ({_safe_url(settings.database_url)})")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    """The Twilio emulator; needs no settings, only TWILIO_* credentials if any are set."""
    try:
        faults = Faults.model_validate_json(args.faults) if args.faults else Faults()
    except ValidationError as exc:
        print(f"notifier: --faults: {exc}", file=sys.stderr)
        return 2
    configure_logging(logging.INFO)
    env = os.environ
    try:
        return asyncio.run(
            run_emulator(
                args.host,
                args.port,
                env.get("TWILIO_ACCOUNT_SID") or DEV_ACCOUNT_SID,
                env.get("TWILIO_AUTH_TOKEN") or DEV_AUTH_TOKEN,
                faults,
                api_key=env.get("TWILIO_API_KEY") or None,
                api_secret=env.get("TWILIO_API_SECRET") or None,
            )
        )
    except OSError as exc:
        print(
            f"notifier: emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service (configured from the environment)")
    serve.add_argument(
        "part",
        nargs="?",
        choices=["all", "grpc", "webhooks"],
        default="all",
        help="all (development: everything in one process), grpc, or webhooks",
    )
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply every pending migration")
    emulator = sub.add_parser(
        "emulator", help="run the local Twilio emulator (Messages API + status callbacks)"
    )
    emulator.add_argument("--host", default="127.0.0.1", help="listen address")
    emulator.add_argument("--port", type=int, default=8090, help="listen port (0: any free one)")
    emulator.add_argument(
        "--faults", metavar="JSON", help="faults, e.g. '{\"latency_seconds\": 0.2}'"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "emulator":
        return _emulator(args)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"notifier: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "db":
            return asyncio.run(_db_upgrade(settings))
        try:
            telemetry = from_env()
        except TelemetryConfigError as exc:
            print(f"notifier: {exc}", file=sys.stderr)
            return 2
        install_global(telemetry)
        return asyncio.run(_serve(settings, args.part, telemetry))
    except StartupError as exc:
        print(f"notifier: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
