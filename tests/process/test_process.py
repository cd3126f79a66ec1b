"""The service as a process: restart durability, signals, migrations, bad configuration."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.support.databases import count_rows
from tests.support.process import grpcurl, notifier_env, run_notifier, start_server

SEND = "notifier.v1.Notifier/SendMessage"
STATUS = "notifier.v1.Notifier/GetDeliveryStatus"


def _send(address: str, payload: dict[str, object]) -> dict[str, object]:
    out = grpcurl("-plaintext", "-d", json.dumps(payload), address, SEND)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_accepted_message_survives_kill_and_restart(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    env = notifier_env(db, NOTIFIER_DISPATCHER_ENABLED="false")  # storage alone is under test
    first = start_server(env)
    try:
        sent = _send(
            first.address, {"to": "+14155550100", "body": "hello", "idempotency_key": "r1"}
        )
    finally:
        first.proc.send_signal(signal.SIGKILL)  # no chance to flush anything
        first.proc.wait(10)
    second = start_server(env)
    try:
        got = grpcurl(
            "-plaintext",
            "-d",
            json.dumps({"message_id": sent["message_id"]}),
            second.address,
            STATUS,
        )
        assert got.returncode == 0, got.stderr
        message = json.loads(got.stdout)["message"]
        assert message["status"] == "MESSAGE_STATUS_PENDING"
        assert message["to"] == "+14155550100"
        # The idempotency key survived too: the replay names the same message.
        again = _send(
            second.address, {"to": "+14155550100", "body": "hello", "idempotency_key": "r1"}
        )
        assert again["message_id"] == sent["message_id"]
        assert again["replayed"] is True
    finally:
        assert second.stop() == 0
    assert count_rows(db, "messages") == 1


def test_sigterm_and_sigint_stop_gracefully(tmp_path: Path) -> None:
    env = notifier_env(tmp_path / "n.db")
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = start_server(env)
        server.proc.send_signal(sig)
        out = server.output()
        assert server.proc.returncode == 0
        assert "notifier: stopped" in out
        assert "Traceback" not in out


def test_development_without_credentials_sends_through_the_emulator_and_says_so(
    tmp_path: Path,
) -> None:
    server = start_server(notifier_env(tmp_path / "n.db"))
    try:
        assert "(development)" in server.banner
        assert "*** TWILIO EMULATOR at http://127.0.0.1:" in server.banner
        sent = _send(server.address, {"to": "+14155550100", "body": "dev"})
        deadline = time.monotonic() + 10
        while True:
            out = grpcurl(
                "-plaintext",
                "-d",
                json.dumps({"message_id": sent["message_id"]}),
                server.address,
                STATUS,
            )
            message = json.loads(out.stdout)["message"]
            if message["status"] == "MESSAGE_STATUS_READ":
                break
            assert time.monotonic() < deadline, message
            time.sleep(0.1)
        assert message["twilio_sid"].startswith("SM")
        # Through the emulator's signed callbacks and the sidecar, every step has its time.
        assert set(message["timestamps"]) == {"created", "queued", "sent", "delivered", "read"}
        assert int(message["delivery_time_ms"]) >= 0
    finally:
        assert server.stop() == 0


def test_production_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    env = notifier_env(tmp_path / "n.db", NOTIFIER_ENV="production")
    out = run_notifier(env, "serve")
    assert out.returncode == 1
    assert "refusing to start in production" in out.stderr
    assert "TWILIO_ACCOUNT_SID: not set" in out.stderr


def test_db_upgrade_then_production_start_without_auto_migration(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    env = notifier_env(db, NOTIFIER_MIGRATE_ON_START="false")
    refused = run_notifier(env, "serve", "grpc")
    assert refused.returncode == 1
    assert "notifier db upgrade" in refused.stderr
    upgraded = run_notifier(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert count_rows(db, "messages") == 0
    server = start_server(env, "grpc")
    try:
        _send(server.address, {"to": "+14155550100", "body": "after upgrade"})
    finally:
        assert server.stop() == 0
    assert count_rows(db, "messages") == 1


def test_bad_configuration_names_the_variable(tmp_path: Path) -> None:
    env = notifier_env(
        tmp_path / "n.db", NOTIFIER_GRPC_ADDR="localhost", NOTIFIER_RETRY_MAX_ATTEMPTS="x"
    )
    out = run_notifier(env, "serve")
    assert out.returncode == 2
    assert "NOTIFIER_GRPC_ADDR: must be HOST:PORT" in out.stderr
    assert "NOTIFIER_RETRY_MAX_ATTEMPTS" in out.stderr
    assert "Traceback" not in out.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    first = start_server(notifier_env(tmp_path / "a.db"))
    try:
        env = notifier_env(tmp_path / "b.db", NOTIFIER_GRPC_ADDR=first.address)
        out = run_notifier(env, "serve")
        assert out.returncode == 1
        assert f"cannot listen on {first.address}" in out.stderr
    finally:
        first.stop()
