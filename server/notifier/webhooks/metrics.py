"""Prometheus metrics of the sidecar: counters of what it received, gauges read from storage."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from notifier.domain.model import Status


class WebhookMetrics:
    """One registry per app, so several apps (tests) never share counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.callbacks = Counter(
            "notifier_status_callbacks",
            "Twilio status callbacks received, by what became of them",
            ["result"],
            registry=self.registry,
        )
        self.inbound = Counter(
            "notifier_inbound_messages",
            "Inbound messages received, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.messages = Gauge(
            "notifier_messages",
            "Messages stored, by current status",
            ["status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "notifier_queue_depth",
            "PENDING messages due now, waiting for the dispatcher",
            registry=self.registry,
        )
        self.oldest_pending = Gauge(
            "notifier_oldest_pending_age_seconds",
            "Age of the oldest due PENDING message",
            registry=self.registry,
        )

    def render(
        self, counts: dict[str, int], due: int, oldest_created_ms: int | None, now_ms: int
    ) -> bytes:
        for status in Status:
            self.messages.labels(status=status.value).set(counts.get(status.value, 0))
        self.queue_depth.set(due)
        age = (now_ms - oldest_created_ms) / 1000 if oldest_created_ms is not None else 0.0
        self.oldest_pending.set(max(0.0, age))
        return generate_latest(self.registry)
