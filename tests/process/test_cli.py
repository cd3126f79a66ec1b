"""notifier-cli run as a real process (.venv/bin/notifier-cli) against a real server:
output people can read, JSON scripts can parse, exit codes, and never a traceback."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier.server import NotifierServer
from tests.support.certs import Certs, make_certs
from tests.support.engine import engine_settings, start_engine
from tests.support.fake_notifier import Recorder, serve
from tests.support.process import BIN
from tests.support.waiting import eventually

CLI = str(BIN / "notifier-cli")
TO = "+14155550100"
BAD_TO = "+14155550199"
ULID = re.compile(r"^([0-9A-Z]{26})  (\w+)", re.M)


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli_env(address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(NOTIFIER_GRPC_ADDR=address, COLUMNS="200")
    return env


async def cli(address: str, *args: str) -> Result:
    """Run notifier-cli without blocking the event loop the server runs on."""
    proc = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        env=cli_env(address),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    result = Result(proc.returncode or 0, out.decode(), err.decode())
    assert "Traceback" not in result.out + result.err, result
    return result


@pytest.fixture
async def live(db_path: Path, emulator: EmulatorServer) -> AsyncIterator[str]:
    """A server with its dispatcher sending to the emulator; yields its address."""
    server, channel = await start_engine(engine_settings(db_path, emulator))
    await channel.close()
    yield f"127.0.0.1:{server.port}"
    await server.stop(grace=1)


async def sent_id(address: str, *args: str) -> str:
    done = await cli(address, "send", *args)
    assert done.code == 0, done
    found = ULID.search(done.out)
    assert found, done.out
    return found.group(1)


async def until_status(address: str, mid: str, status: str, within: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            got = await cli(address, "status", mid, "--json")
            reply: dict[str, Any] = json.loads(got.out)
            if reply["message"]["status"] == status:
                return reply
            await asyncio.sleep(0.1)


async def test_send_status_list_metrics(live: str) -> None:
    mid = await sent_id(live, TO, "Your table is ready", "--tag", "cli")
    replay = await cli(
        live, "send", TO, "Same", "--idempotency-key", "k1", "--tag", "cli", "--json"
    )
    again = await cli(live, "--json", "send", TO, "Same", "--idempotency-key", "k1", "--tag", "cli")
    assert json.loads(again.out)["replayed"] is True
    assert json.loads(again.out)["message_id"] == json.loads(replay.out)["message_id"]
    await until_status(live, mid, "MESSAGE_STATUS_QUEUED")

    status = await cli(live, "status", mid)
    assert status.code == 0
    assert f"message {mid}" in status.out
    assert re.search(r"│ status\s+│ queued", status.out)
    assert re.search(r"│ pending\s+│.*│ api", status.out)
    assert re.search(r"│ 1 .*│ accepted\s+│ 201", status.out)

    listing = await cli(live, "list", "--tag", "cli")
    assert listing.code == 0
    assert "2 message(s), newest first" in listing.out
    assert mid in listing.out
    capped = await cli(live, "list", "--tag", "cli", "--limit", "1", "--json")
    assert len(json.loads(capped.out)) == 1

    metrics = await cli(live, "metrics", "--tag", "cli")
    assert metrics.code == 0
    assert re.search(r"│ total\s+│\s+2 │", metrics.out)
    counts = re.findall(r"│ (?:pending|queued) +│ +(\d) │", metrics.out)
    assert sum(map(int, counts)) == 2
    for label in ("delivery rate", "failure rate", "delivery time p95", "queue depth"):
        assert label in metrics.out


BRAND = "whatsapp:+14155550111"


async def test_sender_option(db_path: Path, emulator: EmulatorServer) -> None:
    """--sender picks a sender profile (issue 16): its From reaches Twilio; list and
    metrics filter by it; an unknown one is a usage error naming the field."""
    senders = json.dumps({"brand": {"whatsapp_from": BRAND}})
    settings = engine_settings(db_path, emulator, NOTIFIER_SENDERS=senders)
    server, channel = await start_engine(settings)
    await channel.close()
    address = f"127.0.0.1:{server.port}"
    try:
        mid = await sent_id(address, TO, "branded", "--sender", "brand")
        await until_status(address, mid, "MESSAGE_STATUS_QUEUED")
        (request,) = [r for r in emulator.state.requests if r.param("Body") == "branded"]
        assert request.param("From") == BRAND
        listed = await cli(address, "list", "--sender", "brand", "--json")
        assert [m["message_id"] for m in json.loads(listed.out)] == [mid]
        metrics = await cli(address, "metrics", "--sender", "brand", "--json")
        assert json.loads(metrics.out)["total"] == "1"
        unknown = await cli(address, "send", TO, "x", "--sender", "nope")
        assert unknown.code != 0
        assert "sender" in unknown.err + unknown.out
    finally:
        await server.stop(grace=1)


async def test_cancel_retry_and_watch(live: str, emulator: EmulatorServer) -> None:
    emulator.faults = Faults(to_errors={BAD_TO: 21211})
    failing = await sent_id(live, BAD_TO, "hi")
    await until_status(live, failing, "MESSAGE_STATUS_FAILED")
    retried = await cli(live, "retry", failing, "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert retried.code == 0
    assert f"re-queued 1 message(s)\n  {failing}" in retried.out
    assert "skipped 01ARZ3NDEKTSV4RRFFQ69G5FAV: not found" in retried.out
    by_filter = await cli(live, "retry", "--status", "failed", "--limit", "5", "--json")
    assert by_filter.code == 0

    scheduled = await sent_id(live, TO, "Reminder", "--send-at", "1h")
    proc = await asyncio.create_subprocess_exec(
        CLI, "watch", scheduled, "--timeout", "20",
        env=cli_env(live), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 10)
    assert f"{scheduled}  scheduled" in first.decode()
    canceled = await cli(live, "cancel", scheduled)
    assert canceled.out.strip() == f"{scheduled}  canceled"
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err
    assert f"{scheduled}  canceled  (api)" in out.decode()

    already = await cli(live, "cancel", scheduled)
    assert already.code == 0
    tag_watch = await cli(live, "watch", "--tag", "nobody", "--timeout", "0.5")
    assert (tag_watch.code, tag_watch.out) == (0, "")
    finished = await cli(live, "watch", failing, "--timeout", "5")  # re-queued, fails again
    assert finished.code == 0
    assert "failed" in finished.out.splitlines()[-1]


async def test_plain_errors_and_exit_codes(live: str) -> None:
    bad = await cli(live, "send", "12345", "hi", "--media", "http://e.com/a.png")
    assert bad.code == 2
    assert "the server refused the request" in bad.err
    assert re.search(r"^  to: ", bad.err, re.M)
    assert re.search(r"^  media_urls\[0\]: ", bad.err, re.M)
    missing = await cli(live, "status", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert missing.code == 3
    assert "not found" in missing.err
    later = await sent_id(live, TO, "x", "--send-at", "2h")
    await cli(live, "cancel", later)
    usage = await cli(live, "list", "--status", "sideways")
    assert usage.code == 2
    assert "unknown status 'sideways'" in usage.err
    no_ids = await cli(live, "watch")
    assert (no_ids.code, no_ids.err.strip()) == (
        2,
        "notifier-cli: watch needs message ids or --tag",
    )


async def test_unreachable_server_and_plaintext_token(tmp_path: Path) -> None:
    down = await cli("127.0.0.1:1", "metrics")
    assert down.code == 4
    assert down.err.startswith("notifier-cli: cannot reach the Notifier server at 127.0.0.1:1")
    remote = await cli("127.0.0.1:1", "--addr", "192.0.2.1:50051", "--token", "t", "metrics")
    assert remote.code == 2
    assert "refusing to send a bearer token in plaintext" in remote.err
    nofile = await cli("127.0.0.1:1", "bulk", str(tmp_path / "missing.csv"))
    assert nofile.code == 2
    assert "cannot read" in nofile.err


def write_csv(path: Path) -> dict[int, str]:
    """1,000 data lines (lines 2..1001) with bad ones mixed in; returns line -> why bad."""
    bad: dict[int, str] = {}
    rows = [["to", "body", "variables", "media_urls", "tags", "idempotency_key"]]
    for n in range(1000):
        line = n + 2
        to, body, variables = f"+1415555{n:04d}", f"Hello {n}, it's ready", ""
        if n % 97 == 13:
            to, bad[line] = "12345", "│ to "
        elif n % 101 == 7:
            body, bad[line] = "", "│ body "
        elif n % 89 == 3:
            variables, bad[line] = '{"1": "Ana"', "│ variables │ not valid JSON"
        tags = "bulk|csv" if n % 2 else "bulk"
        rows.append([to, body, variables, "", tags, ""])
    rows[500].append("one cell too many")
    bad[501] = "│ line      │ more cells than the header has columns"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return bad


@pytest.mark.slow
async def test_bulk_csv_of_a_thousand_lines_with_bad_ones(
    server: NotifierServer, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{server.port}"
    csv_file = tmp_path / "people.csv"
    bad = write_csv(csv_file)
    assert 25 < len(bad) < 50
    done = await cli(address, "bulk", str(csv_file), "--tag", "campaign", "--batch-size", "64")
    assert done.code == 1, done
    local = sum(1 for why in bad.values() if "│ " in why[2:])
    summary = (
        f"1000 line(s): {1000 - len(bad)} accepted, {len(bad)} failed "
        f"({len(bad) - local} refused by the server, {local} unreadable)"
    )
    assert summary in done.out
    reported = [int(n) for n in re.findall(r"^│ (\d+)\s+│", done.out, re.M)]
    assert reported == sorted(bad)
    for line, why in bad.items():
        row = next(r for r in done.out.splitlines() if r.startswith(f"│ {line} "))
        assert why in row, row
    assert "1000/1000" in done.err  # the progress bar's last state

    again = await cli(address, "bulk", str(csv_file), "--json", "--show", "0")
    report = json.loads(again.out)
    assert (report["lines"], report["failed"]) == (1000, len(bad))
    assert [f["line"] for f in report["failures"]] == sorted(bad)
    listing = await cli(address, "list", "--tag", "campaign", "--limit", "2000", "--json")
    assert len(json.loads(listing.out)) == 1000 - len(bad)


async def test_bulk_csv_with_a_bad_header_sends_nothing(
    server: NotifierServer, tmp_path: Path
) -> None:
    csv_file = tmp_path / "typo.csv"
    csv_file.write_text("to,boddy\n+14155550100,hi\n")
    done = await cli(f"127.0.0.1:{server.port}", "bulk", str(csv_file))
    assert done.code == 2
    assert "unknown column(s) boddy" in done.err


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"))


async def test_mutual_tls_flags_and_token(pki: Certs) -> None:
    recorder = Recorder(token="s3cret")
    tls = ["--ca", str(pki.ca), "--server-name", "notifier.test"]
    mtls = [*tls, "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    async with serve(recorder, pki) as address:
        done = await cli(address, "metrics", *mtls, "--token", "s3cret")
        assert done.code == 0, done
        assert re.search(r"│ total\s+│\s+7 │", done.out)
        assert recorder.metadata[-1]["authorization"] == "Bearer s3cret"
        anonymous = await cli(address, "metrics", *mtls)
        assert anonymous.code == 5
        assert "missing or unknown token (set NOTIFIER_TOKEN or --token)" in anonymous.err
        no_cert = await cli(address, "metrics", *tls, "--token", "s3cret", "--timeout", "5")
        assert no_cert.code == 4


async def test_erase_a_recipient(live: str) -> None:
    number = "+14155550177"
    await sent_id(live, number, "Reminder", "--send-at", "1h")  # still waiting: canceled
    erased = await cli(live, "erase", number)
    assert erased.code == 0, erased
    lines = dict(line.rsplit(None, 1) for line in erased.out.strip().splitlines())
    assert (lines["messages"], lines["canceled"], lines["status events"]) == ("1", "1", "1")
    assert lines["twilio deleted"] == "0"
    again = await cli(live, "erase", number, "--json")  # idempotent: nothing left
    assert (again.code, json.loads(again.out)) == (0, {})
    bad = await cli(live, "erase", "555-0100")
    assert bad.code != 0
    assert "to" in bad.err


async def test_erase_at_twilio(live: str, emulator: EmulatorServer) -> None:
    """--at-twilio reaches the server: Twilio (the emulator) deletes its finished copy."""
    number = "+14155550178"
    mid = await sent_id(live, number, "Your code is 4821")
    sid = (await until_status(live, mid, "MESSAGE_STATUS_QUEUED"))["message"]["twilio_sid"]

    async def finished_at_twilio() -> bool:
        message = emulator.state.message(sid)
        return message is not None and message.status in ("delivered", "read")

    await eventually(finished_at_twilio, "Twilio (the emulator) finishes the message")
    erased = await cli(live, "erase", number, "--at-twilio")
    assert erased.code == 0, erased
    lines = dict(line.rsplit(None, 1) for line in erased.out.strip().splitlines())
    assert (lines["messages"], lines["twilio deleted"]) == ("1", "1")
    assert emulator.state.message(sid) is None
