"""Scraping /metrics over HTTP and reading it the way Prometheus does."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from notifier.server import NotifierServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    """Every sample at ``url`` (a /metrics URL): (name, labels) -> value."""
    async with httpx.AsyncClient() as client:
        reply = await client.get(url)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels (0 when absent, as Prometheus reads
    a counter that was never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every sample whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def metrics_url(server: NotifierServer) -> str:
    """Where ``server`` serves /metrics (the test must have set NOTIFIER_METRICS_ADDR)."""
    assert server.metrics is not None
    assert server.metrics.url is not None, "set NOTIFIER_METRICS_ADDR=127.0.0.1:0"
    return server.metrics.url
