"""The Python client (clients/python) against a real server, dispatcher and emulator; and
against small stand-in servers for what the real one cannot show on demand (a bearer
token arriving, UNAVAILABLE once then OK, TLS with client certificates)."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from notifier.api.auth import token_digest
from notifier.config import load_settings
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier.server import NotifierServer, create_server
from notifier_client import (
    InvalidArgument,
    NotFound,
    NotifierClient,
    SyncNotifierClient,
    TlsConfig,
    Unauthenticated,
    Unavailable,
    bulk_item,
    message_filter,
    pb,
    status_name,
)
from tests.support.certs import Certs, make_certs
from tests.support.engine import engine_settings, start_engine
from tests.support.fake_notifier import Recorder, serve
from tests.support.paths import README

TO = "+14155550100"
BAD_TO = "+14155550199"  # the emulator refuses it with 21211
ADMIN = "+14155550101"


@pytest.fixture
async def live(db_path: Path, emulator: EmulatorServer) -> AsyncIterator[NotifierServer]:
    """A server with its dispatcher sending to the emulator, and one admin recipient."""
    settings = engine_settings(db_path, emulator, ADMIN_WHATSAPP_NUMBERS=ADMIN)
    server, channel = await start_engine(settings)
    await channel.close()
    yield server
    await server.stop(grace=1)


@pytest.fixture
async def client(live: NotifierServer) -> AsyncIterator[NotifierClient]:
    async with NotifierClient(f"127.0.0.1:{live.port}") as c:
        yield c


async def until_status(
    client: NotifierClient, mid: str, status: int, within: float = 10
) -> pb.GetDeliveryStatusResponse:
    async with asyncio.timeout(within):
        while True:
            got = await client.status(mid)
            if got.message.status == status:
                return got
            await asyncio.sleep(0.02)


async def test_send_status_list_and_metrics(client: NotifierClient) -> None:
    sent = await client.send(TO, "Your table is ready", tags=["client"])
    assert sent.status == pb.MESSAGE_STATUS_PENDING
    queued = await until_status(client, sent.message_id, pb.MESSAGE_STATUS_QUEUED)
    by_sid = await client.status(twilio_sid=queued.message.twilio_sid)
    assert by_sid.message.message_id == sent.message_id
    assert [e.status for e in queued.history] == [
        pb.MESSAGE_STATUS_PENDING,
        pb.MESSAGE_STATUS_QUEUED,
    ]
    again = await client.send(TO, "Key", idempotency_key="k-1", tags=["client"])
    replay = await client.send(TO, "Key", idempotency_key="k-1", tags=["client"])
    assert (replay.message_id, replay.replayed) == (again.message_id, True)
    third = await client.send(TO, "Third", tags=["client"])
    page = await client.list(message_filter(tag="client"), page_size=2)
    assert [m.message_id for m in page.messages] == [third.message_id, again.message_id]
    assert page.next_page_token
    every = [m.message_id async for m in client.list_all(message_filter(tag="client"), page_size=1)]
    assert every == [third.message_id, again.message_id, sent.message_id]
    capped = [m async for m in client.list_all(message_filter(tag="client"), limit=2)]
    assert len(capped) == 2
    metrics = await client.metrics(tag="client")
    assert metrics.total == 3
    assert sum(c.count for c in metrics.by_status) == 3


async def test_retry_cancel_and_watch(client: NotifierClient, emulator: EmulatorServer) -> None:
    emulator.faults = Faults(to_errors={BAD_TO: 21211})
    failing = await client.send(BAD_TO, "hi")
    failed = await until_status(client, failing.message_id, pb.MESSAGE_STATUS_FAILED)
    assert failed.message.error_code == 21211
    retried = await client.retry([failing.message_id, "01ARZ3NDEKTSV4RRFFQ69G5FAV"])
    assert list(retried.message_ids) == [failing.message_id]
    assert [s.message_id for s in retried.skipped] == ["01ARZ3NDEKTSV4RRFFQ69G5FAV"]
    by_filter = await client.retry(filter=message_filter(statuses=["failed"]), limit=10)
    assert failing.message_id not in by_filter.message_ids  # it is PENDING again, or on its way

    later = datetime.now(UTC) + timedelta(hours=1)
    scheduled = await client.send(TO, "Reminder", send_at=later)
    assert scheduled.status == pb.MESSAGE_STATUS_SCHEDULED
    seen: list[int] = []
    watching = asyncio.Event()

    async def watch() -> None:
        async for update in client.watch(
            [scheduled.message_id], include_current=True, until_final=True, timeout=10
        ):
            seen.append(update.status)
            watching.set()

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(watching.wait(), 5)
    canceled = await client.cancel(scheduled.message_id)
    assert canceled.status == pb.MESSAGE_STATUS_CANCELED
    await asyncio.wait_for(watcher, 10)  # ends by itself: CANCELED is final
    assert seen == [pb.MESSAGE_STATUS_SCHEDULED, pb.MESSAGE_STATUS_CANCELED]


async def test_watch_by_tag_sees_the_dispatcher_hand_it_over(client: NotifierClient) -> None:
    updates: list[pb.WatchDeliveryStatusResponse] = []

    async def watch() -> None:
        async for update in client.watch(tag="watched"):
            updates.append(update)
            if update.status == pb.MESSAGE_STATUS_QUEUED:
                return  # leaving the loop cancels the call

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)  # the watch is registered before the send
    sent = await client.send(TO, "Watch me", tags=["watched"])
    await asyncio.wait_for(watcher, 10)
    assert {u.message_id for u in updates} == {sent.message_id}
    assert updates[-1].message.twilio_sid.startswith("SM")


async def test_notify_order_and_admins(client: NotifierClient) -> None:
    order = await client.notify_order(
        "A-1",
        customer_name="Ana Silva",
        customer_email="ana@example.com",
        items=[("Blue mug", 2, "12.50"), pb.OrderItem(title="Plate", quantity=1, unit_price="5")],
        total="30.00",
        currency="USD",
    )
    assert [d.to for d in order.deliveries] == [ADMIN]
    assert not order.replayed
    replay = await client.notify_order(
        "A-1",
        customer_name="Ana Silva",
        customer_email="ana@example.com",
        items=[("Blue mug", 2, "12.50"), ("Plate", 1, "5")],
        total="30.00",
        currency="USD",
    )
    assert replay.replayed
    custom = await client.notify_admins(pb.CustomNotification(title="Hello", body="Admins"))
    assert len(custom.deliveries) == 1
    low = await client.notify_admins(
        pb.LowStockNotification(
            product_id="p-9", product_name="Mug", sku="M", current_stock=3, threshold=5
        )
    )
    assert low.deliveries[0].message_id


async def test_bulk_from_an_async_iterable_keeps_order_and_reports_bad_items(
    client: NotifierClient,
) -> None:
    rows = [
        (TO, "one"),
        ("not a number", "two"),
        ("+14155550102", None),  # no content, and no shared content to fall back on
        ("+14155550103", "four"),
    ]

    async def items() -> AsyncIterator[pb.BulkItem]:
        for n, (to, body) in enumerate(rows * 30):
            await asyncio.sleep(0)
            yield bulk_item(to, body, correlation_id=f"c-{n}")

    results = [r async for r in client.bulk(items(), batch_size=7)]
    assert [r.index for r in results] == list(range(120))
    assert [r.correlation_id for r in results] == [f"c-{n}" for n in range(120)]
    kinds = [r.WhichOneof("result") for r in results[:4]]
    assert kinds == ["accepted", "error", "error", "accepted"]
    assert results[1].error.code == "INVALID_ARGUMENT"
    assert [v.field for v in results[1].error.violations] == ["to"]
    assert results[2].error.violations
    shared = pb.BulkContent(body="Shared", tags=["bulk"])
    plain = [r async for r in client.bulk([bulk_item(TO), bulk_item(TO)], defaults=shared)]
    assert all(r.HasField("accepted") for r in plain)


async def test_errors_are_typed_with_their_details(client: NotifierClient) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.send("12345", "", media_urls=["http://e.com/a.png"])
    err = info.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {"to", "media_urls[0]"} <= set(err.fields)
    assert all(v.description for v in err.field_violations)
    with pytest.raises(NotFound) as missing:
        await client.status("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert missing.value.resource == ("message", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    with pytest.raises(ValueError, match="exactly one"):
        await client.status()


# -- stand-in servers ------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    async with serve(recorder) as address:
        yield recorder, address


async def test_bearer_token_reaches_the_server_on_a_plaintext_channel(
    fake: tuple[Recorder, str],
) -> None:
    recorder, address = fake
    async with NotifierClient(address, token="s3cret") as client:
        assert (await client.metrics()).total == 7
        assert [u.status async for u in client.watch(["m-1"])] == [pb.MESSAGE_STATUS_READ]
    assert [m["authorization"] for m in recorder.metadata] == ["Bearer s3cret"] * 2
    async with NotifierClient(address) as anonymous:
        await anonymous.metrics()
    assert "authorization" not in recorder.metadata[-1]


async def test_unavailable_once_then_ok_is_retried_by_the_channel(
    fake: tuple[Recorder, str],
) -> None:
    recorder, address = fake
    async with NotifierClient(address) as client:
        recorder.failures = 1
        assert (await client.metrics()).total == 7
        assert len(recorder.requests) == 2
        recorder.failures = 1
        sent = await client.send(TO, "hi")
        assert sent.message_id == "m-1"
        first, second = recorder.requests[2:]
        # The retry is safe because both attempts carry the same generated key.
        assert first.idempotency_key == second.idempotency_key
        assert first.idempotency_key.startswith("auto-")


async def test_sends_without_a_key_are_not_retried_when_retry_sends_is_off(
    fake: tuple[Recorder, str],
) -> None:
    recorder, address = fake
    async with NotifierClient(address, retry_sends=False) as client:
        recorder.failures = 1
        with pytest.raises(Unavailable) as info:
            await client.send(TO, "hi")
        assert len(recorder.requests) == 1
        assert recorder.requests[0].idempotency_key == ""
        assert info.value.retry_delay == timedelta(seconds=2)
        recorder.failures = 10  # more than the policy's 5 attempts
        with pytest.raises(Unavailable):
            await client.metrics()
        assert len(recorder.requests) == 1 + 5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"))


async def test_mutual_tls_with_a_server_name_override_and_token(pki: Certs) -> None:
    recorder = Recorder()
    tls = TlsConfig(
        root_ca=pki.ca,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        server_name="notifier.test",
    )
    async with serve(recorder, pki) as address:
        async with NotifierClient(address, token="s3cret", tls=tls) as client:
            assert (await client.metrics()).total == 7
        assert recorder.metadata[0]["authorization"] == "Bearer s3cret"
        no_cert = TlsConfig(root_ca=pki.ca, server_name="notifier.test")
        async with NotifierClient(address, tls=no_cert, retry=None) as stranger:
            with pytest.raises(Unavailable):
                await stranger.metrics(timeout=5)
    with pytest.raises(ValueError, match="key"):
        TlsConfig(client_cert=pki.client_cert).credentials()


async def test_the_real_server_with_tokens_and_mutual_tls(db_path: Path, pki: Certs) -> None:
    """The client's token and certificates against the server's own checks, not a stand-in:
    the token opens the API, a wrong one gets Unauthenticated, a missing client
    certificate never gets past the handshake."""
    settings = load_settings(
        NOTIFIER_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}",
        NOTIFIER_GRPC_ADDR="127.0.0.1:0",
        NOTIFIER_DISPATCHER_ENABLED=False,
        NOTIFIER_API_TOKENS=token_digest("s3cret"),
        NOTIFIER_TLS_CERT=str(pki.server_cert),
        NOTIFIER_TLS_KEY=str(pki.server_key),
        NOTIFIER_TLS_CLIENT_CA=str(pki.ca),
    )
    server = await create_server(settings)
    await server.start()
    address = f"127.0.0.1:{server.port}"
    tls = TlsConfig(root_ca=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    try:
        async with NotifierClient(address, token="s3cret", tls=tls) as client:
            sent = await client.send(TO, body="hello over mutual TLS")
            assert (await client.status(sent.message_id)).message.message_id == sent.message_id
        async with NotifierClient(address, token="wrong", tls=tls, retry=None) as intruder:
            with pytest.raises(Unauthenticated):
                await intruder.metrics(timeout=5)
        no_cert = TlsConfig(root_ca=pki.ca)
        async with NotifierClient(address, token="s3cret", tls=no_cert, retry=None) as stranger:
            with pytest.raises(Unavailable):
                await stranger.metrics(timeout=5)
    finally:
        await server.stop(grace=1)


def readme_example() -> str:
    readme = README.read_text()
    found = re.search(r"<!-- client-example -->\n```python\n(.*?)```", readme, re.S)
    assert found, "README has no client example"
    return found.group(1)


async def test_the_readme_example_runs_as_written(live: NotifierServer) -> None:
    example = readme_example()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env["NOTIFIER_GRPC_ADDR"] = f"127.0.0.1:{live.port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", example, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    # The watch opens with the message as it is now: still pending, or already queued
    # when the dispatcher sent it before the watch began (it is woken on acceptance).
    statuses = [line for line in lines if line.startswith("status: ")]
    assert statuses in (["status: pending", "status: queued"], ["status: queued"])
    assert "listed: 1 | total: 1" in lines
    assert lines[-1].startswith("refused: {'to': ")


def sync_session(address: str) -> list[str]:
    """The blocking facade, from a thread with no event loop of its own."""
    seen: list[str] = []
    with SyncNotifierClient(address) as client:
        sent = client.send(TO, "From a script", tags=["sync"])
        seen.append(status_name(client.status(sent.message_id).message.status))
        for update in client.watch([sent.message_id], include_current=True):
            seen.append(status_name(update.status))
            if update.message.twilio_sid:
                break
        if sent.message_id in {m.message_id for m in client.list_all(message_filter(tag="sync"))}:
            seen.append("listed")
        with pytest.raises(InvalidArgument):
            client.send("12345", "x")
    return seen


async def test_the_sync_facade(live: NotifierServer) -> None:
    seen = await asyncio.to_thread(sync_session, f"127.0.0.1:{live.port}")
    assert seen[0] in {"pending", "queued"}
    assert seen[-2:] == ["queued", "listed"]


@pytest.mark.slow
async def test_a_send_rides_out_a_locked_database(
    server: NotifierServer, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real server answers UNAVAILABLE while another process holds the write lock
    (after SQLite's 5 s busy timeout); the channel's retry policy tries again, and the
    generated idempotency key keeps it to one message."""
    locker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
    try:
        async with NotifierClient(f"127.0.0.1:{server.port}") as client:
            sending = asyncio.create_task(client.send(TO, "patience", timeout=30))
            await asyncio.sleep(7)  # the first attempt has failed; the next one waits
            assert not sending.done()
            refused = [r for r in caplog.records if "storage unavailable during" in r.message]
            assert any("SendMessage" in r.message for r in refused)  # so this is a retry
            await asyncio.to_thread(locker.execute, "ROLLBACK")
            sent = await asyncio.wait_for(sending, 20)
            assert sent.status == pb.MESSAGE_STATUS_PENDING
            page = await client.list()
            assert [m.message_id for m in page.messages] == [sent.message_id]
    finally:
        locker.close()
