"""What the webhook sidecar stores when a number writes to us, written straight into the
database (the sidecar is tested on its own): tests of erasure and retention."""

from __future__ import annotations

import asyncio
import time
import uuid

from tests.support.databases import TestDb


async def heard_from(database: TestDb, number: str, *, state: bool = True) -> None:
    """An inbound message from ``number``, received now, and (``state``) its recipient
    state."""
    now = int(time.time() * 1000)
    await asyncio.to_thread(
        database.execute,
        "INSERT INTO inbound_messages (id, message_sid, from_addr, to_addr, channel, body,"
        " received_at) VALUES (?, ?, ?, ?, 'whatsapp', 'STOP', ?)",
        uuid.uuid4().hex[:26],
        "SM" + uuid.uuid4().hex,
        number,
        "+14155238886",
        now,
    )
    if not state:
        return
    await asyncio.to_thread(
        database.execute,
        "INSERT INTO recipients (channel, address, opted_out, last_inbound_at, updated_at)"
        " VALUES ('whatsapp', ?, ?, ?, ?)",
        number,
        False,
        now,
        now,
    )
