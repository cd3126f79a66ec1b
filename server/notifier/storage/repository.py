"""The repository: one object with every kind of stored data, for the composition root.

Each kind lives in its own module (messages, outbox, callbacks, queries, metrics,
events, reconcile), over the shared ``Store``; consumers depend on the narrow protocols in
``notifier.domain.ports``, which this class satisfies all at once.
"""

from __future__ import annotations

from notifier.domain.clock import Clock, now_ms
from notifier.domain.fallback import FallbackPolicy
from notifier.domain.retry import RetryPolicy
from notifier.storage.callbacks import Callbacks
from notifier.storage.engine import Database
from notifier.storage.events import EventFeed
from notifier.storage.lifecycle import Lifecycle
from notifier.storage.messages import Messages
from notifier.storage.metrics import MetricsReader
from notifier.storage.outbox import Outbox
from notifier.storage.queries import Queries
from notifier.storage.reconcile import Reconciliation


class Repository(
    Messages, Callbacks, Outbox, Queries, MetricsReader, EventFeed, Reconciliation, Lifecycle
):
    def __init__(
        self,
        db: Database,
        clock: Clock = now_ms,
        *,
        refuse_outside_window: bool = False,
        fallback: FallbackPolicy | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(db, clock, refuse_outside_window=refuse_outside_window)
        self._fallback = fallback or self._fallback
        self._retry = retry or self._retry
