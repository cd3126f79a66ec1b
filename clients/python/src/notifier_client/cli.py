"""notifier-cli: the Notifier API from a shell, with plain-words errors and exit codes.

Every failure ends as one readable message on stderr and a documented exit code, never
a traceback: scripts branch on the code, people read the message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from notifier_client import render
from notifier_client.bulkcsv import CsvFormatError, Row, count_rows, read_rows
from notifier_client.channel import TlsConfig
from notifier_client.client import DEFAULT, DEFAULT_ADDRESS, NotifierClient, Timeout
from notifier_client.errors import NotifierError
from notifier_client.types import message_filter, parse_channel, parse_status, status_name
from notifier_proto.v1 import notifier_pb2 as pb


class Exit(IntEnum):
    """The exit codes, as documented in ``--help`` and the README."""

    OK = 0
    ITEMS_FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    UNAVAILABLE = 4
    AUTH = 5
    REFUSED = 6
    ERROR = 7
    INTERRUPTED = 130


EPILOG = """\
environment:
  NOTIFIER_GRPC_ADDR  server address (default 127.0.0.1:50051); --addr wins
  NOTIFIER_TOKEN      bearer token; --token wins

exit codes:
  0  done
  1  bulk: some lines failed (see the summary)
  2  bad input: usage, a field the server refused (named), unreadable file
  3  not found (unknown message id or SID)
  4  unavailable, timed out or over capacity: try again later
  5  authentication: token missing, unknown or not allowed
  6  refused by the state of things (opted-out recipient, already sent, key reused)
  7  any other error
"""

_CODE_EXIT = {
    grpc.StatusCode.INVALID_ARGUMENT: Exit.USAGE,
    grpc.StatusCode.OUT_OF_RANGE: Exit.USAGE,
    grpc.StatusCode.NOT_FOUND: Exit.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: Exit.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Exit.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Exit.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: Exit.AUTH,
    grpc.StatusCode.PERMISSION_DENIED: Exit.AUTH,
    grpc.StatusCode.FAILED_PRECONDITION: Exit.REFUSED,
    grpc.StatusCode.ALREADY_EXISTS: Exit.REFUSED,
    grpc.StatusCode.ABORTED: Exit.REFUSED,
}
_TWILIO_SID = re.compile(r"^(SM|MM)[0-9a-fA-F]{32}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """Bad input found on this side; exit code 2."""


# -- parsing of values -----------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``2h``, ``7d``."""
    found = _DURATION.match(text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 10m, 2h or 7d")
    return timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])


def parse_time(text: str, *, future: bool = False) -> datetime:
    """An ISO 8601 time, or a duration counted back from now (or ahead, ``future``)."""
    if _DURATION.match(text.strip()):
        delta = parse_duration(text)
        return datetime.now(UTC) + (delta if future else -delta)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time (2026-01-02T10:00:00Z) nor a duration (2h)"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _future_time(text: str) -> datetime:
    return parse_time(text, future=True)


def _variable(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _status(text: str) -> pb.MessageStatus:
    try:
        return parse_status(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _channel(text: str) -> pb.Channel:
    try:
        return parse_channel(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- the parser ------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    """Options valid before or after the command; SUPPRESS keeps a subcommand's unset
    option from overwriting the same option given before the command."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    s = argparse.SUPPRESS
    g.add_argument("--addr", default=s, help="server HOST:PORT (env NOTIFIER_GRPC_ADDR)")
    g.add_argument("--token", default=s, help="bearer token (env NOTIFIER_TOKEN)")
    g.add_argument("--tls", action="store_true", default=s, help="TLS with the system roots")
    g.add_argument("--ca", type=Path, default=s, help="root CA file (PEM); implies --tls")
    g.add_argument("--cert", type=Path, default=s, help="client certificate (mutual TLS)")
    g.add_argument("--key", type=Path, default=s, help="client certificate's private key")
    g.add_argument("--server-name", default=s, help="name expected in the server certificate")
    g.add_argument(
        "--plaintext-token",
        action="store_true",
        default=s,
        help="allow sending the token without TLS to a non-loopback address",
    )
    g.add_argument("--timeout", type=float, default=s, help="deadline of each call, in seconds")
    g.add_argument("--json", action="store_true", default=s, help="JSON output for scripts")
    return p


def _content_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel", type=_channel, help="whatsapp (default) or sms")
    p.add_argument("--content-sid", help="Twilio Content template SID (HX...)")
    p.add_argument("--var", type=_variable, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--media", action="append", default=[], metavar="URL", help="media URL")
    p.add_argument("--tag", action="append", default=[], help="tag (repeatable)")
    p.add_argument("--sender", help="sender profile to send from (default: 'default')")


def _filter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", type=_status, action="append", default=[], help="e.g. failed")
    p.add_argument("--to", help="recipient, E.164")
    p.add_argument("--tag", help="carrying this tag")
    p.add_argument("--channel", type=_channel, help="whatsapp or sms")
    p.add_argument("--since", type=parse_time, help="created at or after (ISO time or 2h)")
    p.add_argument("--until", type=parse_time, help="created before (ISO time or 30m)")
    p.add_argument("--sender", help="sent from this sender profile")


def _parser() -> argparse.ArgumentParser:
    conn = _connection_options()
    parser = argparse.ArgumentParser(
        prog="notifier-cli",
        description="Talk to a Notifier server: send, bulk, status, watch, metrics, list, "
        "retry, cancel, erase.",
        epilog=EPILOG,
        parents=[conn],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[conn], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip

    send = command("send", "send one message")
    send.add_argument("to", help="recipient, E.164 (+14155550100)")
    send.add_argument("body", nargs="?", help="the text (or use --content-sid)")
    _content_options(send)
    send.add_argument("--idempotency-key", help="deduplicates retries of this send")
    send.add_argument("--send-at", type=_future_time, help="ISO time, or a delay like 10m")
    send.add_argument("--validity", type=parse_duration, help="worth sending for, e.g. 2h")
    send.add_argument("--wait", action="store_true", help="reply once Twilio has answered")

    bulk = command("bulk", "send every line of a CSV file (to, body, variables, ...)")
    bulk.add_argument("file", type=Path, help="CSV with a header row")
    bulk.add_argument("--body", help="text for lines without body or content_sid")
    _content_options(bulk)
    bulk.add_argument("--batch-size", type=int, default=200, help="items per request")
    bulk.add_argument("--show", type=int, default=50, help="failed lines to list (default 50)")

    status = command("status", "delivery status, history and attempts of one message")
    status.add_argument("id", help="message id, or Twilio SID (SM...)")

    watch = command("watch", "print status changes as they happen")
    watch.add_argument("ids", nargs="*", metavar="ID", help="message ids")
    watch.add_argument("--tag", help="watch every message with this tag (until --timeout)")
    watch.add_argument("--no-current", action="store_true", help="skip the current status")

    metrics = command("metrics", "totals, rates, delivery times and queue state")
    metrics.add_argument("--since", type=parse_time, help="window start (default 24h ago)")
    metrics.add_argument("--until", type=parse_time, help="window end (default now)")
    metrics.add_argument("--channel", type=_channel)
    metrics.add_argument("--tag")
    metrics.add_argument("--sender", help="only this sender profile's messages")

    listing = command("list", "messages matching a filter, newest first")
    _filter_options(listing)
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")

    retry = command("retry", "put failed messages back in the outbox, by id or filter")
    retry.add_argument("ids", nargs="*", metavar="ID")
    _filter_options(retry)
    retry.add_argument("--limit", type=int, default=0, help="at most this many (filter)")
    retry.add_argument("--validity", type=parse_duration, help="new validity, e.g. 2h")

    cancel = command("cancel", "cancel a message Twilio does not have yet")
    cancel.add_argument("id")
    erase = command("erase", "erase everything stored about one number (data-subject request)")
    erase.add_argument("to", help="E.164 number, e.g. +14155550100")
    erase.add_argument(
        "--at-twilio", action="store_true", help="also delete Twilio's copies of its messages"
    )
    return parser


# -- the commands ----------------------------------------------------------------------


@dataclass
class Ctx:
    client: NotifierClient
    args: argparse.Namespace
    console: Console
    json: bool
    timeout: Timeout


async def cmd_send(ctx: Ctx) -> Exit:
    a = ctx.args
    reply = await ctx.client.send(
        a.to,
        a.body,
        channel=a.channel,
        content_sid=a.content_sid,
        variables=dict(a.var),
        media_urls=a.media,
        idempotency_key=a.idempotency_key,
        tags=a.tag,
        send_at=a.send_at,
        validity=a.validity,
        wait_for_acceptance=a.wait,
        sender=a.sender,
        timeout=ctx.timeout,
    )
    if ctx.json:
        render.dump(render.as_dict(reply))
        return Exit.OK
    extra = "  replayed" if reply.replayed else ""
    sid = f"  {reply.twilio_sid}" if reply.twilio_sid else ""
    print(f"{reply.message_id}  {status_name(reply.status)}{sid}{extra}")
    return Exit.OK


async def cmd_status(ctx: Ctx) -> Exit:
    ref = ctx.args.id
    if _TWILIO_SID.match(ref):
        reply = await ctx.client.status(twilio_sid=ref, timeout=ctx.timeout)
    else:
        reply = await ctx.client.status(ref, timeout=ctx.timeout)
    if ctx.json:
        render.dump(render.as_dict(reply))
    else:
        render.print_tables(ctx.console, render.status_tables(reply))
    return Exit.OK


async def cmd_watch(ctx: Ctx) -> Exit:
    a = ctx.args
    if not a.ids and not a.tag:
        raise UsageError("watch needs message ids or --tag")
    until_final = bool(a.ids) and not a.tag
    updates = ctx.client.watch(
        a.ids,
        tag=a.tag,
        include_current=not a.no_current,
        until_final=until_final,
        timeout=ctx.timeout,
    )
    try:
        async for update in updates:
            if ctx.json:
                render.dump(render.as_dict(update))
            else:
                print(render.watch_line(update), flush=True)
    except NotifierError as exc:
        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED and not until_final:
            return Exit.OK  # a tag watch has no end of its own: --timeout is how it ends
        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            late = "--timeout passed before every message was final"
            raise NotifierError(exc.code, late) from exc
        raise
    return Exit.OK


async def cmd_metrics(ctx: Ctx) -> Exit:
    a = ctx.args
    reply = await ctx.client.metrics(
        start=a.since,
        end=a.until,
        channel=a.channel,
        tag=a.tag,
        sender=a.sender,
        timeout=ctx.timeout,
    )
    if ctx.json:
        render.dump(render.as_dict(reply))
    else:
        render.print_tables(ctx.console, render.metrics_tables(reply))
    return Exit.OK


def _filter(a: argparse.Namespace) -> pb.MessageFilter | None:
    given = (a.status, a.to, a.tag, a.channel, a.since, a.until, a.sender)
    if not any(given):
        return None
    return message_filter(
        statuses=a.status,
        to=a.to,
        tag=a.tag,
        channel=a.channel,
        created_after=a.since,
        created_before=a.until,
        sender=a.sender,
    )


async def cmd_list(ctx: Ctx) -> Exit:
    a = ctx.args
    if a.limit < 1:
        raise UsageError("--limit must be at least 1")
    found = ctx.client.list_all(_filter(a), page_size=min(a.limit, 500), limit=a.limit)
    messages = [m async for m in found]
    if ctx.json:
        render.dump([render.as_dict(m) for m in messages])
    else:
        ctx.console.print(render.messages_table(messages))
    return Exit.OK


async def cmd_retry(ctx: Ctx) -> Exit:
    a = ctx.args
    reply = await ctx.client.retry(
        a.ids, filter=_filter(a), limit=a.limit, validity=a.validity, timeout=ctx.timeout
    )
    if ctx.json:
        render.dump(render.as_dict(reply))
        return Exit.OK
    print(f"re-queued {len(reply.message_ids)} message(s)")
    for mid in reply.message_ids:
        print(f"  {mid}")
    for skipped in reply.skipped:
        print(f"skipped {skipped.message_id}: {skipped.reason}")
    return Exit.OK


async def cmd_cancel(ctx: Ctx) -> Exit:
    message = await ctx.client.cancel(ctx.args.id, timeout=ctx.timeout)
    if ctx.json:
        render.dump(render.as_dict(message))
    else:
        print(f"{message.message_id}  {status_name(message.status)}")
    return Exit.OK


async def cmd_erase(ctx: Ctx) -> Exit:
    reply = await ctx.client.erase_recipient(
        ctx.args.to, at_twilio=ctx.args.at_twilio, timeout=ctx.timeout
    )
    if ctx.json:
        render.dump(render.as_dict(reply))
    else:
        for field in reply.DESCRIPTOR.fields:
            print(f"{field.name.replace('_', ' '):<18}{getattr(reply, field.name)}")
    return Exit.OK


# -- bulk ------------------------------------------------------------------------------


@dataclass
class Failure:
    line: int
    to: str
    code: str
    problems: list[tuple[str, str]]


@dataclass
class BulkRun:
    """What a bulk run learned: counts and every failed line."""

    total: int
    accepted: int = 0
    failures: list[Failure] = field(default_factory=list)
    lines: dict[str, str] = field(default_factory=dict)  # correlation id (line) -> to


def _defaults(a: argparse.Namespace) -> pb.BulkContent:
    content = pb.BulkContent(
        channel=a.channel or pb.CHANNEL_UNSPECIFIED,
        variables=dict(a.var),
        media_urls=a.media,
        tags=a.tag,
        sender=a.sender or "",
    )
    if a.body is not None:
        content.body = a.body
    if a.content_sid is not None:
        content.content_sid = a.content_sid
    return content


async def _items(
    rows: Iterable[Row], run: BulkRun, progress: Callable[[], None]
) -> AsyncIterator[pb.BulkItem]:
    """The readable lines as items; unreadable ones become failures right away."""
    for row in rows:
        if row.item is None:
            problem = [(row.error.field, row.error.problem)] if row.error else []
            run.failures.append(Failure(row.line, row.to, "CSV", problem))
            progress()
            continue
        run.lines[row.item.correlation_id] = row.to
        yield row.item


def _record(run: BulkRun, result: pb.BulkItemResult) -> None:
    if result.HasField("accepted"):
        run.accepted += 1
        run.lines.pop(result.correlation_id, None)
        return
    err = result.error
    problems = [(v.field, v.description) for v in err.violations] or [("", err.message)]
    to = run.lines.pop(result.correlation_id, "")
    run.failures.append(Failure(int(result.correlation_id), to, err.code, problems))


def _failure_table(failures: list[Failure], show: int) -> Table:
    table = Table(title="failed lines")
    for col in ("line", "to", "code", "field", "problem"):
        table.add_column(col)
    for f in sorted(failures, key=lambda f: f.line)[:show]:
        for n, (name, problem) in enumerate(f.problems):
            head = (str(f.line), f.to, f.code) if n == 0 else ("", "", "")
            table.add_row(*(Text(c) for c in (*head, name, problem)))
    return table


def _summary(run: BulkRun, ctx: Ctx) -> None:
    failed = len(run.failures)
    local = sum(1 for f in run.failures if f.code == "CSV")
    if ctx.json:
        render.dump(
            {
                "lines": run.total,
                "accepted": run.accepted,
                "failed": failed,
                "failures": [
                    {"line": f.line, "to": f.to, "code": f.code, "problems": f.problems}
                    for f in sorted(run.failures, key=lambda f: f.line)
                ],
            }
        )
        return
    if failed:
        ctx.console.print(_failure_table(run.failures, ctx.args.show))
        if failed > ctx.args.show:
            print(f"... and {failed - ctx.args.show} more failed line(s) (--show N)")
    print(
        f"{run.total} line(s): {run.accepted} accepted, {failed} failed "
        f"({failed - local} refused by the server, {local} unreadable)"
    )


async def cmd_bulk(ctx: Ctx) -> Exit:
    a = ctx.args
    run = BulkRun(total=count_rows(a.file))
    rows = read_rows(a.file)
    first = next(rows, None)  # reads the header: a bad one stops here, before any send
    err_console = Console(stderr=True, highlight=False)
    columns = (
        TextColumn("sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, disable=ctx.json) as progress:
        task = progress.add_task("bulk", total=run.total, failed=0)

        def advance() -> None:
            progress.update(task, advance=1, failed=len(run.failures))

        all_rows: Iterable[Row] = [] if first is None else _chain(first, rows)
        results = ctx.client.bulk(
            _items(all_rows, run, advance),
            defaults=_defaults(a),
            batch_size=a.batch_size,
            timeout=ctx.timeout,
        )
        try:
            async for result in results:
                _record(run, result)
                advance()
        except NotifierError:
            _summary(run, ctx)
            raise
    _summary(run, ctx)
    return Exit.ITEMS_FAILED if run.failures else Exit.OK


def _chain(first: Row, rest: Iterator[Row]) -> Iterator[Row]:
    yield first
    yield from rest


# -- running ---------------------------------------------------------------------------

COMMANDS = {
    "send": cmd_send,
    "bulk": cmd_bulk,
    "status": cmd_status,
    "watch": cmd_watch,
    "metrics": cmd_metrics,
    "list": cmd_list,
    "retry": cmd_retry,
    "cancel": cmd_cancel,
    "erase": cmd_erase,
}


def _tls(a: argparse.Namespace) -> TlsConfig | None:
    wanted = any(getattr(a, n, None) for n in ("tls", "ca", "cert", "key", "server_name"))
    if not wanted:
        return None
    return TlsConfig(
        root_ca=getattr(a, "ca", None),
        client_cert=getattr(a, "cert", None),
        client_key=getattr(a, "key", None),
        server_name=getattr(a, "server_name", None),
    )


def address(a: argparse.Namespace) -> str:
    return getattr(a, "addr", None) or os.environ.get("NOTIFIER_GRPC_ADDR") or DEFAULT_ADDRESS


async def run(a: argparse.Namespace) -> Exit:
    timeout: Timeout = getattr(a, "timeout", DEFAULT)
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
    client = NotifierClient(
        address(a),
        token=getattr(a, "token", None) or os.environ.get("NOTIFIER_TOKEN") or None,
        tls=_tls(a),
        allow_plaintext_token=getattr(a, "plaintext_token", False),
    )
    async with client:
        ctx = Ctx(
            client, a, Console(highlight=False, width=width), getattr(a, "json", False), timeout
        )
        return await COMMANDS[a.command](ctx)


def explain(err: NotifierError, addr: str) -> tuple[str, Exit]:
    """A failed call in plain words, and its exit code."""
    code = _CODE_EXIT.get(err.code, Exit.ERROR)
    if err.field_violations:
        lines = [f"  {v.field}: {v.description}" for v in err.field_violations]
        return "the server refused the request:\n" + "\n".join(lines), code
    if err.code == grpc.StatusCode.UNAVAILABLE and "connect" in err.message.lower():
        return f"cannot reach the Notifier server at {addr} ({err.message})", code
    text = f"{err.code.name.lower().replace('_', ' ')}: {err.message}"
    for p in err.preconditions:
        text += f"\n  {p.subject}: {p.description}"
    if err.retry_delay is not None:
        text += f" (retry in {err.retry_delay.total_seconds():g} s)"
    if code == Exit.AUTH:
        text += " (set NOTIFIER_TOKEN or --token)"
    return text, code


def _fail(message: str, code: Exit) -> int:
    print(f"notifier-cli: {message}", file=sys.stderr)
    return int(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the notifier-cli console script."""
    args = _parser().parse_args(argv)
    try:
        return int(asyncio.run(run(args)))
    except NotifierError as exc:
        return _fail(*explain(exc, address(args)))
    except (UsageError, CsvFormatError) as exc:
        return _fail(str(exc), Exit.USAGE)
    except ValueError as exc:  # e.g. a token refused over plaintext, bad TLS options
        return _fail(str(exc), Exit.USAGE)
    except OSError as exc:
        name = f" {exc.filename}" if exc.filename else ""
        return _fail(f"cannot read{name}: {exc.strerror or exc}", Exit.USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", Exit.INTERRUPTED)
    except Exception as exc:  # the promise is no tracebacks; say what it was
        return _fail(f"unexpected error: {type(exc).__name__}: {exc}", Exit.ERROR)


if __name__ == "__main__":
    sys.exit(main())
