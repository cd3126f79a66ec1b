"""The benchmark harness runs end to end in its quick mode and prints every row.

Figures are never asserted here (they are benchmarks, and this mode's workloads are
too small to mean anything): only that each part of SPEC section 9, on both backends
(the PostgreSQL legs on a fresh database of their own), and each alternative, produced
its row, in the table and in both result files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT

ROWS = [
    "SendMessage accepted durably (SQLite), 64 callers: rate",
    "SendMessage accepted durably (SQLite), 64 callers: p99 latency",
    "SendMessage accepted durably (PostgreSQL), 64 callers: rate",
    "SendMessage accepted durably (PostgreSQL), 64 callers: p99 latency",
    "SendMessage: server CPU per accepted message",
    "SendBulk recipients accepted durably (SQLite)",
    "SendBulk recipients accepted durably (PostgreSQL)",
    "SendBulk: server CPU per accepted recipient",
    "Messages dispatched end to end (SQLite)",
    "Messages dispatched end to end (PostgreSQL)",
    "Dispatch: server CPU per dispatched message",
    "Claim of 64 due messages, deep outbox (SQLite)",
    "Claim of 64 due messages, deep outbox (PostgreSQL)",
    "Status callbacks ingested with signature checks (sidecar, SQLite)",
    "Status callbacks ingested with signature checks (sidecar, PostgreSQL)",
    "Callbacks: server CPU per callback",
    "Dispatch, 3 serve grpc replicas on one PostgreSQL database",
    "Rate limiter at 80/s (SQLite, 1 process): achieved rate over",
    "Rate limiter at 80/s (SQLite, 1 process): most arrivals in any 1-s window",
    "Rate limiter at 80/s (PostgreSQL, 2 processes): achieved rate over",
    "Rate limiter at 80/s (PostgreSQL, 2 processes): most arrivals in any 1-s window",
    "Resident memory, gRPC server",
    "GetMetrics over 30 days (SQLite)",
    "GetMetrics over 30 days (PostgreSQL)",
    "SendMessage p99 while",  # ... N messages are purged (issue 15)
    "Retention purge rate beside that load (rows/s)",
    "(a) direct twilio SDK + retry loop",
    "(b) Celery task per message (Redis): enqueued",
    "(b) Celery task per message (Redis): sent end to end",
]


@pytest.mark.slow
@pytest.mark.postgresql
def test_quick_bench_prints_every_row(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_QUICK": "1", "BENCH_OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "bench"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # both backends and four server processes, on a loaded machine
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    names = [f["name"] for f in results["figures"]]
    markdown = (tmp_path / "RESULTS.md").read_text()
    for row in ROWS:
        assert any(n.startswith(row) for n in names), row
        assert row in done.stdout, row
        assert row in markdown, row
    assert "machine" in results
    assert "load average" in done.stdout
