"""The README's grpcurl walk-through works as written, against a live server."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

from notifier.api.auth import token_digest
from notifier.emulator.server import EmulatorServer
from tests.support.engine import engine_settings, start_engine
from tests.support.paths import README
from tests.support.process import BIN


def block(marker: str) -> str:
    text = README.read_text()
    found = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", text, re.S)
    assert found, f"README has no block marked {marker}"
    return found.group(1)


async def run_block(
    script: str, address: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    script = script.replace("127.0.0.1:50051", address)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", **extra_env)
    return await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=README.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_walkthrough_runs_as_written(db_path: Path, emulator: EmulatorServer) -> None:
    server, channel = await start_engine(engine_settings(db_path, emulator))
    try:
        out = await run_block(block("walkthrough"), f"127.0.0.1:{server.port}")
    finally:
        await channel.close()
        await server.stop(grace=1)
    assert out.returncode == 0, out.stderr
    assert "notifier.v1.Notifier" in out.stdout
    assert '"status": "SERVING"' in out.stdout
    assert '"replayed": true' in out.stdout
    ids = re.findall(r'"message_id": "([0-9A-Z]{26})"', out.stdout)
    assert len(set(ids)) == 1  # the replay and the status name the first message
    assert re.search(r"message id: [0-9A-Z]{26}\n", out.stdout)
    assert '"status": "MESSAGE_STATUS_PENDING"' in out.stdout  # the first reply
    assert '"status": "MESSAGE_STATUS_QUEUED"' in out.stdout  # a second later
    (accepted,) = emulator.state.accepted
    assert f'"twilio_sid": "{accepted.sid}"' in out.stdout
    assert '"outcome": "accepted"' in out.stdout
    assert out.stdout.count('"tags": [\n') >= 2  # status and the listing


async def test_invalid_example_shows_every_violation(address: str) -> None:
    out = await run_block(block("walkthrough-invalid"), address)
    assert out.returncode != 0
    assert "Code: InvalidArgument" in out.stderr
    assert "4 bad field(s): to, content_sid, media_urls, media_urls[0]" in out.stderr


async def test_recipes_run_as_written(db_path: Path, emulator: EmulatorServer) -> None:
    from notifier.server import create_sidecar

    settings = engine_settings(
        db_path,
        emulator,
        STATUS_CALLBACK_URL=None,
        NOTIFIER_HTTP_ADDR="127.0.0.1:0",
        ADMIN_WHATSAPP_NUMBERS="+14155550101,+14155550102",
        NOTIFIER_API_TOKENS=token_digest("recipes-token"),  # the recipes pass the token
    )
    sidecar, settings = await create_sidecar(settings)
    await sidecar.start()
    server, channel = await start_engine(settings)
    try:
        out = await run_block(
            block("recipes"), f"127.0.0.1:{server.port}", NOTIFIER_TOKEN="recipes-token"
        )
    finally:
        await channel.close()
        await server.stop(grace=1)
        await sidecar.stop()
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert '"twilio_sid": "SM' in text  # wait_for_acceptance
    assert '"history": [' in text  # GetDeliveryStatus
    assert '"correlation_id": "c-2"' in text
    assert '"code": "INVALID_ARGUMENT"' in text
    assert text.count('"to": "+1415555010') >= 4  # two alerts, two admins each
    assert '"messages": [' in text  # ListMessages
    assert '"total": "' in text  # GetMetrics (int64 as a JSON string)
    assert '"status": "MESSAGE_STATUS_CANCELED"' in text
    assert "MESSAGE_STATUS_READ" in text  # the watch saw the message through to read
    bodies = [m.body for m in emulator.state.accepted]
    assert any("*New Order Received!*" in b for b in bodies)
    assert any("Blue mug" in b and "Low Stock" in b for b in bodies)
