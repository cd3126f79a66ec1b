"""Prometheus metrics of the gRPC process, scraped over HTTP after real traffic through
the emulator, and every metric the alert rules and the dashboard name is exported
(issue 13)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier.server import Sidecar, StartupError, create_server, create_sidecar
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.engine import Engine, engine_settings, start_engine
from tests.support.metrics import metrics_url, names, scrape, total, value
from tests.support.paths import ROOT
from tests.support.waiting import eventually

SEND = "/notifier.v1.Notifier/SendMessage"
GET = "/notifier.v1.Notifier/GetDeliveryStatus"
REFUSED = "+14155550199"  # 21211: permanent
BUSY = "+14155550198"  # 30001: transient, retried until the attempts run out
METRICS_ENV: dict[str, Any] = {"NOTIFIER_METRICS_ADDR": "127.0.0.1:0"}


async def _traffic(engine: Engine, emulator: EmulatorServer) -> list[str]:
    emulator.faults = Faults(to_errors={REFUSED: 21211, BUSY: 30001}, latency_seconds=0.01)
    ids = [await engine.send(body=f"m{i}") for i in range(6)]
    ids.append(await engine.send(to=REFUSED, body="refused"))
    ids.append(await engine.send(to=BUSY, body="busy"))
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await engine.send(to="555-0100")
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await engine.status("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    for mid in ids:
        await engine.until(mid, lambda s: s.message.status != pb.MESSAGE_STATUS_PENDING)
    return ids


@pytest.mark.parametrize("engine_env", [METRICS_ENV])
async def test_calls_sends_errors_and_claims_are_counted(
    engine: Engine, emulator: EmulatorServer
) -> None:
    await _traffic(engine, emulator)
    url = metrics_url(engine.server)

    async def dispatcher_idle() -> bool:
        return value(await scrape(url), "notifier_twilio_sends_in_flight") == 0

    await eventually(dispatcher_idle, "no send in flight")
    s = await scrape(url)
    assert value(s, "notifier_rpcs_total", method=SEND, code="OK") == 8
    assert value(s, "notifier_rpcs_total", method=SEND, code="INVALID_ARGUMENT") == 1
    assert value(s, "notifier_rpcs_total", method=GET, code="NOT_FOUND") == 1
    assert value(s, "notifier_rpc_duration_seconds_count", method=SEND) == 9
    assert value(s, "notifier_twilio_sends_total", outcome="accepted") == 6
    assert value(s, "notifier_twilio_sends_total", outcome="permanent") == 1
    assert value(s, "notifier_twilio_sends_total", outcome="transient") == 3  # max attempts
    assert value(s, "notifier_twilio_errors_total", code="21211", outcome="permanent") == 1
    assert value(s, "notifier_twilio_errors_total", code="30001", outcome="transient") == 3
    assert total(s, "notifier_twilio_send_duration_seconds_count") == 10
    assert value(s, "notifier_rate_limiter_wait_seconds_count") == 10
    assert value(s, "notifier_outbox_claims_total") == 10
    assert value(s, "notifier_outbox_lease_takeovers_total") == 0
    assert value(s, "notifier_outbox_quarantined_total") == 0
    assert value(s, "notifier_storage_up") == 1


@pytest.mark.parametrize("engine_env", [{**METRICS_ENV, "NOTIFIER_DISPATCHER_ENABLED": False}])
async def test_the_outbox_gauges_show_what_waits(engine: Engine) -> None:
    await engine.send(body="waiting")  # no dispatcher in this process: it stays due
    url = metrics_url(engine.server)

    async def waiting_shows() -> bool:
        s = await scrape(url)
        return (
            value(s, "notifier_outbox_messages") == 1
            and value(s, "notifier_outbox_oldest_pending_age_seconds") >= 1
        )

    await eventually(waiting_shows, "one unsent message, due for over a second")


# -- the alert rules and the dashboard name only metrics the service exports -----------

DEPLOY = ROOT / "deploy"
_METRIC = re.compile(r"\bnotifier_[a-z0-9_]+\b")


def _named_in_rules_and_dashboard() -> set[str]:
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    exprs = [line for line in rules.splitlines() if not line.lstrip().startswith(("#", "- alert"))]
    dashboard = json.loads((DEPLOY / "grafana" / "notifier.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return {m for e in exprs for m in _METRIC.findall(e)}


@pytest.fixture
async def sidecar(database: TestDb, emulator: EmulatorServer) -> AsyncIterator[Sidecar]:
    settings = engine_settings(
        database, emulator, STATUS_CALLBACK_URL=None, NOTIFIER_HTTP_ADDR="127.0.0.1:0"
    )
    running, _ = await create_sidecar(settings)
    await running.start()
    yield running
    await running.stop()


async def test_every_metric_the_rules_and_dashboard_name_is_exported(
    database: TestDb, emulator: EmulatorServer, sidecar: Sidecar
) -> None:
    settings = engine_settings(database, emulator, **METRICS_ENV)
    server, channel = await start_engine(settings)
    try:
        await _traffic(Engine(server, channel), emulator)
        async with httpx.AsyncClient() as client:  # unsigned webhooks: forged
            for path in ("status", "webhook"):
                forged = await client.post(
                    f"{sidecar.url}/api/v1/whatsapp/{path}", data={"MessageSid": "SMx"}
                )
                assert forged.status_code == 403
        exported = names(await scrape(metrics_url(server)))
        exported |= names(await scrape(f"{sidecar.url}/metrics"))
    finally:
        await channel.close()
        await server.stop(grace=1)
    named = _named_in_rules_and_dashboard()
    assert len(named) >= 10
    assert named - exported == set()


async def test_a_taken_metrics_port_stops_the_start_naming_it(
    database: TestDb, emulator: EmulatorServer
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(StartupError, match=f"cannot listen on {addr}"):
            await create_server(engine_settings(database, emulator, NOTIFIER_METRICS_ADDR=addr))
