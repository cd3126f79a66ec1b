"""No resend loop: a message whose outcome cannot be recorded is sent at most
NOTIFIER_MAX_CLAIMS times, then fails saying why (issue 13).

The failure is the database's own: a trigger refuses to store accepted attempts, as a
constraint or a value the schema cannot hold would. Before the guard, such a message was
claimed after every lease and POSTed to Twilio again, forever, while GetDeliveryStatus
said PENDING.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.engine import Engine, requests_to
from tests.support.metrics import metrics_url, scrape, total, value
from tests.support.poison import refuse_accepted_attempts

pytestmark = pytest.mark.backends("sqlite", "postgresql")

POISON_ENV: dict[str, Any] = {
    "NOTIFIER_LEASE_SECONDS": 1,
    "NOTIFIER_MAX_CLAIMS": 3,
    "NOTIFIER_METRICS_ADDR": "127.0.0.1:0",
}


@pytest.mark.parametrize("engine_env", [POISON_ENV])
async def test_a_message_whose_outcome_cannot_be_recorded_is_sent_three_times_then_failed(
    engine: Engine, emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="notifier.dispatch.dispatcher")
    await refuse_accepted_attempts(engine.server.db.writer)
    mid = await engine.send(body="poison", tags=["poison"])

    done = await engine.until_status(mid, pb.MESSAGE_STATUS_FAILED, within=60)

    reason = "delivery outcome could not be recorded after 3 claims; it may have been sent"
    assert requests_to(emulator, "poison") == 3  # one POST per claim, then none
    assert done.message.error_message == reason
    assert [(e.status, e.source) for e in done.history][-1] == (
        pb.MESSAGE_STATUS_FAILED,
        "dispatcher",
    )
    assert [(a.outcome, a.error_message) for a in done.attempts] == [("ambiguous", reason)]
    metrics = await engine.stub.GetMetrics(pb.GetMetricsRequest(tag="poison"))
    assert metrics.ambiguous_outcomes == 1
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"message {mid} quarantined: {reason}" in logged
    samples = await scrape(metrics_url(engine.server))
    assert value(samples, "notifier_outbox_quarantined_total") == 1
    assert value(samples, "notifier_outbox_claims_total") == 3
    assert value(samples, "notifier_outbox_lease_takeovers_total") == 2
    assert total(samples, "notifier_twilio_sends_total", outcome="accepted") == 3
    # Still not sent again: the message is out of the outbox for good.
    assert requests_to(emulator, "poison") == 3
