"""Prism serving Twilio's own OpenAPI description of the Messages API (tests/contract,
Apache-2.0, see NOTICE): it checks each request against the description and answers
with the description's example (the same ``sid`` for every message)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notifier.config import Settings, load_settings
from tests.support.databases import TestDb
from tests.support.paths import ROOT, TWILIO_SPEC

PRISM = ROOT / "node_modules" / ".bin" / "prism"
ACCOUNT = "AC" + "0123456789abcdef" * 2


@dataclass
class Prism:
    url: str
    log_path: Path

    def mark(self) -> int:
        return len(self.log_path.read_text().splitlines())

    def violations(self, since: int) -> list[str]:
        """Prism's verdicts, after line ``since`` of its log, that were not clean passes."""
        lines = self.log_path.read_text().splitlines()[since:]
        return [
            ln.split("[VALIDATOR]")[1].strip()
            for ln in lines
            if "[VALIDATOR]" in ln and "success" not in ln
        ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CREATE = "/2010-04-01/Accounts/{AccountSid}/Messages.json"


def _spec_for_prism(folder: Path) -> Path:
    """Twilio's description plus one hint for Prism, which cannot read repeated form keys
    as an array (stoplightio/prism#2473): ``MediaUrl`` is declared ``explode: false``.
    For a single media URL, which is what WhatsApp takes, the wire form is the same under
    both styles (``MediaUrl=<url>``), so the request checked is exactly the one sent."""
    spec = json.loads(TWILIO_SPEC.read_text())
    form = spec["paths"][CREATE]["post"]["requestBody"]["content"][
        "application/x-www-form-urlencoded"
    ]
    form["encoding"] = {"MediaUrl": {"style": "form", "explode": False}}
    path = folder / "twilio_messages_for_prism.json"
    path.write_text(json.dumps(spec))
    return path


@contextlib.contextmanager
def running_prism(folder: Path) -> Iterator[Prism]:
    """Prism on a free port, until the block ends."""
    assert PRISM.exists(), "Prism is missing: run `make install` (npm @stoplight/prism-cli)"
    port = _free_port()
    spec = _spec_for_prism(folder)
    log_path = folder / "prism.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(PRISM), "mock", "--errors", "-h", "127.0.0.1", "-p", str(port), str(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Prism is listening" not in log_path.read_text():
            assert proc.poll() is None, "Prism exited:\n" + log_path.read_text()
            assert time.monotonic() < deadline, "Prism did not start:\n" + log_path.read_text()
            time.sleep(0.1)
        yield Prism(f"http://127.0.0.1:{port}", log_path)
    finally:
        proc.terminate()
        proc.wait(10)


def prism_settings(database: TestDb, twilio_url: str, **env: Any) -> Settings:
    """A Notifier server whose Twilio is ``twilio_url`` (Prism, or a front to it)."""
    values: dict[str, Any] = {
        "NOTIFIER_DATABASE_URL": database.url,
        "NOTIFIER_GRPC_ADDR": "127.0.0.1:0",
        "NOTIFIER_METRICS_ADDR": "127.0.0.1:0",
        "NOTIFIER_TWILIO_TIMEOUT_SECONDS": 1,
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_AUTH_TOKEN": "t" * 32,
        "TWILIO_WHATSAPP_FROM": "whatsapp:+14155238886",
        "TWILIO_API_BASE_URL": twilio_url,
        "STATUS_CALLBACK_URL": "https://notifier.example.com/api/v1/whatsapp/status",
    }
    values.update(env)
    return load_settings(**values)
