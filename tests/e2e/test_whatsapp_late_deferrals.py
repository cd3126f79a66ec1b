"""63049 and 63018 reported after Twilio took the message, as real Twilio mostly reports
them, through the real path on a SQLite file and on PostgreSQL: gRPC server ->
dispatcher -> Twilio emulator (``whatsapp_late_outcomes``) -> a signed failed callback
through the sidecar, or the reconciler's fetch -> the message re-queued under the
code's backoff (NOTIFIER_DEFERRAL_BASE made seconds-long) and sent again; never an SMS
fallback for these codes."""

from __future__ import annotations

import pytest

from notifier.emulator.faults import Faults
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.databases import TestDb
from tests.support.sidecar_engine import engine_with_sidecar

pytestmark = pytest.mark.backends("sqlite", "postgresql")

HELD_BACK = "+14155550181"
THROTTLED = "+14155550182"
SILENT = "+14155550183"  # held back, and its callbacks are lost: the fetch tells
SHORT_LIVED = "+14155550184"
FALLBACK = pb.Fallback(sms=True, sms_body="Sale today")
PENDING, READ = pb.MESSAGE_STATUS_PENDING, pb.MESSAGE_STATUS_READ


def _whatsapp_sends(emulator: EmulatorServer, to: str) -> int:
    return sum(m.is_whatsapp for m in emulator.state.accepted_to(to))


def _no_sms(emulator: EmulatorServer, to: str) -> bool:
    return all(m.is_whatsapp for m in emulator.state.accepted_to(to))


async def test_a_63049_or_63018_callback_sends_the_message_again_until_it_goes_through(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(
        whatsapp_outcomes={HELD_BACK: 63049, THROTTLED: 63018, SILENT: 63049},
        whatsapp_late_outcomes=True,
        to_drop_callbacks=[SILENT],
    )
    async with engine_with_sidecar(
        database,
        emulator,
        NOTIFIER_DEFERRAL_BASE="1s",
        NOTIFIER_RECONCILE_AFTER="1s",
        NOTIFIER_RECONCILE_GIVE_UP="1h",
        # A send timing out would be an ordinary failure; after three deferrals it ends
        # the budget of NOTIFIER_RETRY_MAX_ATTEMPTS=3 (CI, loaded: 0.5 s was too short).
        NOTIFIER_TWILIO_TIMEOUT_SECONDS=5,
    ) as running:
        eng = running.engine
        validity = {"seconds": 3600}
        held = await eng.send(to=HELD_BACK, body="sale", validity=validity, fallback=FALLBACK)
        throttled = await eng.send(to=THROTTLED, body="hi", validity=validity, tags=["rl"])
        fetched = await eng.send(to=SILENT, body="sale", validity=validity, fallback=FALLBACK)
        for mid in (held, fetched):
            got = await eng.until(mid, lambda s: s.message.attempts >= 2, within=30)
            assert got.message.status != pb.MESSAGE_STATUS_FAILED
        # 63018 from callbacks: more sends than NOTIFIER_RETRY_MAX_ATTEMPTS (3), never failed.
        t = await eng.until(throttled, lambda s: s.message.attempts >= 4, within=30)
        assert t.message.status != pb.MESSAGE_STATUS_FAILED
        assert {a.outcome for a in t.attempts[:3]} == {"rate_limited"}
        assert {a.error_code for a in t.attempts[:3]} == {63018}
        metrics = await eng.stub.GetMetrics(pb.GetMetricsRequest(tag="rl"))
        assert metrics.failure_rate == 0.0
        emulator.faults = Faults(to_drop_callbacks=[SILENT])
        for mid, to in ((held, HELD_BACK), (throttled, THROTTLED), (fetched, SILENT)):
            done = await eng.until_status(mid, READ, within=60)
            sends = _whatsapp_sends(emulator, to)
            assert done.message.attempts == sends >= 2
            assert done.message.fallback_message_id == ""
            assert _no_sms(emulator, to)
        got = await eng.status(held)
        first = got.attempts[0]
        assert (first.outcome, first.error_code) == ("deferred", 63049)
        assert got.attempts[-1].outcome == "accepted"
        history = [(e.source, e.status, e.error_code) for e in got.history]
        deferral = history.index(("deferral", PENDING, 63049))
        assert history[deferral - 1] == ("callback", pb.MESSAGE_STATUS_FAILED, 63049)
        assert ("callback", READ, 0) in history[deferral:]  # the later send, in one history
        fetched_history = [(e.source, e.status) for e in (await eng.status(fetched)).history]
        assert ("reconcile", pb.MESSAGE_STATUS_FAILED) in fetched_history
        assert ("deferral", PENDING) in fetched_history


async def test_a_63049_callback_ends_the_message_once_its_validity_runs_out(
    database: TestDb, emulator: EmulatorServer
) -> None:
    emulator.faults = Faults(whatsapp_outcomes={SHORT_LIVED: 63049}, whatsapp_late_outcomes=True)
    async with engine_with_sidecar(database, emulator, NOTIFIER_DEFERRAL_BASE="1s") as running:
        eng = running.engine
        mid = await eng.send(
            to=SHORT_LIVED, body="sale", validity={"seconds": 3}, fallback=FALLBACK
        )
        ended = (pb.MESSAGE_STATUS_FAILED, pb.MESSAGE_STATUS_EXPIRED)  # by the report, or
        # by the dispatcher when a loaded machine claims the re-queued send after its validity
        done = await eng.until(mid, lambda s: s.message.status in ended, within=30)
        assert done.message.error_code == 63049
        assert done.message.attempts == _whatsapp_sends(emulator, SHORT_LIVED) >= 2
        assert done.message.fallback_message_id == ""  # 63049 is not a fallback code
        assert _no_sms(emulator, SHORT_LIVED)
