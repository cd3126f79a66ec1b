"""Prometheus counters of the reconciler (fetches from Twilio by result, messages given
up as unconfirmed), in a registry of their own so the process's /metrics endpoint can
take them in with ``registry.register(...)`` or serve this registry beside its own."""

from __future__ import annotations

import enum

from prometheus_client import CollectorRegistry, Counter


class FetchResult(enum.StrEnum):
    UPDATED = "updated"  # Twilio had news, applied (or recorded) as a callback would be
    UNCHANGED = "unchanged"  # Twilio says what we already know
    NOT_FOUND = "not_found"  # 404: deleted at Twilio; not fetched again
    # The three below back off: the message is fetched again at its next time.
    RATE_LIMITED = "rate_limited"  # 429: the fetch budget is too high for the account
    TWILIO_ERROR = "twilio_error"  # 5xx, or an answer we cannot read: Twilio's trouble
    NO_ANSWER = "no_answer"  # timeout, no connection: the network's (or Twilio's) trouble
    UNAUTHORIZED = "unauthorized"  # 401: the reconciler stopped


def backed_off(http_status: int | None) -> FetchResult:
    """The result a fetch that backs off is counted under, from Twilio's HTTP status
    (None: no answer): an operator tells a budget too high from an outage by it."""
    if http_status is None:
        return FetchResult.NO_ANSWER
    if http_status == 429:
        return FetchResult.RATE_LIMITED
    return FetchResult.TWILIO_ERROR


class ReconcileMetrics:
    """The reconciler's counters in ``registry`` (default: a new one, ``self.registry``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.fetches = Counter(
            "notifier_reconcile_fetches",
            "Messages fetched from Twilio because their callbacks did not come, by result",
            ["result"],
            registry=self.registry,
        )
        self.unconfirmed = Counter(
            "notifier_reconcile_unconfirmed",
            "Messages the reconciler stopped fetching while not final (gave_up, not_found)",
            ["reason"],
            registry=self.registry,
        )
        for result in FetchResult:
            self.fetches.labels(result.value)  # every series shows, at 0 until it counts

    def fetched(self, result: FetchResult) -> None:
        self.fetches.labels(result.value).inc()
