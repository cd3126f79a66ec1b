"""WatchDeliveryStatus sees the status callbacks that another process records: the
webhook sidecar runs as ``notifier serve webhooks`` and shares only the database."""

from __future__ import annotations

import asyncio
from pathlib import Path

from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.engine import Engine, engine_settings, start_engine
from tests.support.process import notifier_env, start_webhooks
from tests.support.watching import CALLBACKS, LIFECYCLE, SOURCES, read_changes, watching


async def test_watch_sees_callbacks_a_sidecar_process_records(
    db_path: Path, emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.faults = CALLBACKS
    env = notifier_env(db_path, TWILIO_AUTH_TOKEN=emulator.auth_token)
    proc, base = await asyncio.to_thread(start_webhooks, env, tmp_path / "webhooks.log")
    try:
        # This process has no sidecar: every callback lands in the other process.
        server, channel = await start_engine(
            engine_settings(db_path, emulator, STATUS_CALLBACK_URL=f"{base}/api/v1/whatsapp/status")
        )
        try:
            engine = Engine(server, channel)
            call = await watching(server, engine.stub, tag="elsewhere")
            mid = await engine.send(body="via the other process", tags=["elsewhere"])
            changes = await read_changes(call, 5)
            call.cancel()
        finally:
            await channel.close()
            await server.stop(grace=1)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 15)
    assert [c.event.status for c in changes] == [pb.MESSAGE_STATUS_PENDING, *LIFECYCLE]
    assert [c.event.source for c in changes] == ["api", *SOURCES]
    assert {c.message_id for c in changes} == {mid}
    assert proc.returncode == 0
    assert "Traceback" not in (tmp_path / "webhooks.log").read_text()
