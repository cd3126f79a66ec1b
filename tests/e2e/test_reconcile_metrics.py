"""The reconciler's counters as Prometheus sees them: scraped over HTTP from the gRPC
process's /metrics (NOTIFIER_METRICS_ADDR), each result counted once per fetch Twilio (the
emulator) answered that way; on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from notifier.emulator.app import Credentials
from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from tests.support.databases import TestDb
from tests.support.metrics import metrics_url, scrape, value
from tests.support.sidecar_engine import engine_with_sidecar
from tests.support.waiting import eventually

pytestmark = pytest.mark.backends("sqlite", "postgresql")

STAYS_SENT = "+14155550171"  # Twilio answers, and the message stays "sent" there
THROTTLED = "+14155550172"  # every fetch answered 429
BROKEN = "+14155550173"  # every fetch answered 503
GONE = "+14155550174"  # every fetch answered 404: deleted at Twilio
FETCHES = "notifier_reconcile_fetches_total"
RESULTS = ("updated", "unchanged", "rate_limited", "twilio_error", "no_answer", "not_found")


def _answers(emulator: EmulatorServer, to: str) -> list[int | None]:
    accepted = emulator.state.accepted_to(to)
    if not accepted:  # not sent yet: a loaded dispatcher may not have got to it
        return []
    (message,) = accepted
    return [f.http_status for f in emulator.state.fetches if f.sid == message.sid]


def _expected(emulator: EmulatorServer) -> dict[str, float]:
    """What the counters must say, from the answers Twilio gave: the first fetch that
    found the message sent is news, each later one changes nothing."""
    kept = Counter(_answers(emulator, STAYS_SENT))
    every = Counter(f.http_status for f in emulator.state.fetches)
    return {
        "updated": min(kept[200], 1),
        "unchanged": max(kept[200] - 1, 0),
        "rate_limited": every[429],
        "twilio_error": every[503],
        "no_answer": 0,
        "not_found": every[404],
        "unauthorized": every[401],
    }


async def test_a_scrape_counts_each_fetch_by_what_twilio_answered(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(
        to_drop_callbacks=[STAYS_SENT, THROTTLED, BROKEN, GONE],
        delivered_after_seconds=3600,
        read_after_seconds=3600,
        to_fetch_errors={THROTTLED: 20429, BROKEN: 20503, GONE: 20404},
    )
    async with engine_with_sidecar(
        database,
        emulator,
        NOTIFIER_RECONCILE_AFTER="0.5s",
        NOTIFIER_RECONCILE_GIVE_UP="1h",
        NOTIFIER_METRICS_ADDR="127.0.0.1:0",
    ) as running:
        url = metrics_url(running.server)
        before = await scrape(url)
        assert all(value(before, FETCHES, result=r) == 0 for r in (*RESULTS, "unauthorized"))
        for to in (STAYS_SENT, THROTTLED, BROKEN, GONE):
            await running.engine.send(to=to)

        async def each_answer_seen() -> bool:
            return (
                _answers(emulator, STAYS_SENT)[:2] == [200, 200]
                and _answers(emulator, THROTTLED)[:2] == [429, 429]
                and _answers(emulator, BROKEN)[:2] == [503, 503]
                and _answers(emulator, GONE)[:1] == [404]
            )

        await eventually(each_answer_seen, "fetches answered 200, 200, 429 x2, 503 x2, 404")
        # The token is rotated at Twilio: the next fetch is refused and stops the reconciler.
        emulator.emulator.credentials = Credentials(emulator.account_sid, "rotated" * 4)

        async def agrees() -> bool:
            expected = _expected(emulator)
            samples = await scrape(url)
            got = {r: value(samples, FETCHES, result=r) for r in expected}
            return expected["unauthorized"] >= 1 and got == expected

        await eventually(agrees, "the scrape agreeing with Twilio's answers after a 401")
        await asyncio.sleep(1.5)  # 3 intervals: a reconciler still running would fetch
        samples = await scrape(url)
        expected = _expected(emulator)
        assert {r: value(samples, FETCHES, result=r) for r in expected} == expected
        assert 1 <= value(samples, FETCHES, result="unauthorized") <= 4  # those in flight
        assert _answers(emulator, GONE) == [404]  # never fetched again
        unconfirmed = "notifier_reconcile_unconfirmed_total"
        assert value(samples, unconfirmed, reason="not_found") == 1
        assert value(samples, unconfirmed, reason="gave_up") == 0
