"""``notifier emulator`` as a process: it listens, uses the TWILIO_* credentials when set,
applies its --faults, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from notifier.emulator import DEV_FROM
from tests.support.twilio import TO, twilio_sdk


async def test_notifier_emulator_command(tmp_path: Path) -> None:
    """``notifier emulator`` uses TWILIO_* credentials when set, and stops on SIGTERM."""
    account, token = "AC" + "1" * 32, "t" * 32
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFIER_", "TWILIO_"))}
    env.update(TWILIO_ACCOUNT_SID=account, TWILIO_AUTH_TOKEN=token, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "notifier",
        "emulator",
        "--port",
        "0",
        "--faults",
        '{"to_errors": {"+14155550199": 21610}}',
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        found = re.search(
            r"Twilio EMULATOR listening on (http://127\.0\.0\.1:\d+) \(account (AC\w+)\)", line
        )
        assert found, line
        assert found.group(2) == account
        sdk = await twilio_sdk(found.group(1), account, token, account)
        try:
            message = await sdk.client.messages.create_async(to=TO, from_=DEV_FROM, body="x")
            assert message.status == "queued"
            error = await sdk.error(to="whatsapp:+14155550199", body="x")
            assert error.code == 21610
        finally:
            await sdk.http.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
