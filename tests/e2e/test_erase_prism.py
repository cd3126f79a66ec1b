"""EraseRecipient with at_twilio through gRPC, against Prism serving Twilio's own OpenAPI
description (issue 15): the server's DELETE .../Messages/{Sid}.json, and its POST Body=""
for a message Twilio is still sending, are requests Twilio accepts, on both backends.

Prism answers every DELETE with the description's 204, so a front passes each request
on to Prism (which checks it) and, while told the message is still in flight, answers
the DELETE as Twilio does then (HTTP 400, error 20009) instead: that is what makes the
server redact the message rather than delete it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.engine import Engine, start_engine
from tests.support.prism import Prism, prism_settings, running_prism

pytestmark = pytest.mark.backends("sqlite", "postgresql")

STILL_SENDING = {
    "code": 20009,
    "message": "Cannot delete message because delivery has not completed",
    "more_info": "https://www.twilio.com/docs/errors/20009",
    "status": 400,
}
PASSED_ON = ("Authorization", "Content-Type", "Accept", "User-Agent")


class Front:
    """Every request to Prism and Prism's answer back, but for the DELETEs while
    ``in_flight``: Prism still sees and checks them, Twilio's 20009 goes back."""

    def __init__(self, prism: Prism) -> None:
        self.prism = prism
        self.in_flight = False
        self.url = ""
        self.seen: list[tuple[str, str, bytes]] = []  # method, path, form
        self._session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k in PASSED_ON}
        form = await request.read()
        self.seen.append((request.method, request.path, form))
        async with self._session.request(
            request.method,
            self.prism.url + request.path_qs,
            data=form,
            headers=headers,
        ) as answer:
            body, status = await answer.read(), answer.status
            kind = answer.headers.get("Content-Type")
        if request.method == "DELETE" and self.in_flight:
            return web.json_response(STILL_SENDING, status=400)
        return web.Response(
            body=body, status=status, headers={"Content-Type": kind} if kind else {}
        )

    async def __aenter__(self) -> Front:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._runner.cleanup()
        assert self._session is not None
        await self._session.close()


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prism]:
    with running_prism(tmp_path_factory.mktemp("prism")) as running:
        yield running


@pytest.fixture
async def front(prism: Prism) -> AsyncIterator[Front]:
    async with Front(prism) as running:
        yield running


@pytest.fixture
async def engine(database: TestDb, front: Front) -> AsyncIterator[Engine]:
    server, channel = await start_engine(prism_settings(database, front.url))
    yield Engine(server, channel)
    await channel.close()
    await server.stop(grace=1)


async def _queued_sid(engine: Engine, to: str) -> str:
    """Send to ``to`` and wait until Twilio (Prism) has it: its SID."""
    mid = await engine.send(to=to, body="your code is 4821")
    status = await engine.until_status(mid, pb.MESSAGE_STATUS_QUEUED)
    assert status.message.twilio_sid
    return status.message.twilio_sid


async def test_erase_at_twilio_is_what_twilio_accepts(
    engine: Engine, front: Front, prism: Prism
) -> None:
    # Prism gives every message the same SID; each erase frees it for the next send.
    sending = await _queued_sid(engine, "+14155550140")
    mark = prism.mark()
    front.in_flight = True  # Twilio still sending it: DELETE refused, body redacted
    redacted = await engine.stub.EraseRecipient(
        pb.EraseRecipientRequest(to="+14155550140", at_twilio=True)
    )
    assert (redacted.messages, redacted.attempts) == (1, 1)
    assert (redacted.twilio_deleted, redacted.twilio_redacted) == (0, 1)

    done = await _queued_sid(engine, "+14155550141")
    assert done == sending
    front.in_flight = False  # Twilio done with it: deleted
    deleted = await engine.stub.EraseRecipient(
        pb.EraseRecipientRequest(to="+14155550141", at_twilio=True)
    )
    assert (deleted.messages, deleted.attempts) == (1, 1)
    assert (deleted.twilio_deleted, deleted.twilio_redacted) == (1, 0)

    await asyncio.sleep(0.2)  # let Prism finish writing its verdicts
    assert prism.violations(mark) == []
    lines = prism.log_path.read_text().splitlines()[mark:]
    received = [ln for ln in lines if "[HTTP SERVER]" in ln and f"/Messages/{done}.json" in ln]
    assert [ln.split("]")[2].split()[0] for ln in received] == ["delete", "post", "delete"]
    posts = [form for method, path, form in front.seen if method == "POST" and done in path]
    assert posts == [b"Body="]  # the redaction: an empty body, nothing else
