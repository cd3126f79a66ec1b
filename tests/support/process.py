"""Run ``notifier`` as a real process, as an operator would."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from notifier.emulator import DEV_FROM
from notifier.emulator.server import EmulatorServer
from notifier_proto.v1 import notifier_pb2 as pb
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.databases import TestDb

BIN = Path(sys.executable).parent
GRPCURL = str(BIN / "grpcurl")
_SERVING = re.compile(r"gRPC serving on [\d.]+:(\d+)")
_SERVING_WEBHOOKS = re.compile(r"webhooks serving on (http://[\d.]+:\d+)")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    banner: str
    _drained: list[str] = field(default_factory=list)
    _drain: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def drain(self) -> None:
        """Read the process's output from now on into memory: a pipe nobody reads fills
        (64 KiB), and a chatty server then blocks on its next log line (test_crash hung
        so on a loaded machine, its lease warnings unread)."""
        out = self.proc.stdout
        if out is None or self._drain is not None:
            return
        self._drain = threading.Thread(target=lambda: self._drained.extend(out), daemon=True)
        self._drain.start()

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)

    def output(self, timeout: float = 15) -> str:
        """Everything it wrote after the banner, once it has exited."""
        self.proc.wait(timeout)
        if self._drain is not None:
            self._drain.join(timeout)
        return "".join(self._drained)


def notifier_env(db: Path | TestDb, **extra: str) -> dict[str, str]:
    """The environment of a ``notifier`` process on ``db`` (a SQLite file or a TestDb)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFIER_", "TWILIO_"))}
    env.update(
        NOTIFIER_DATABASE_URL=db.url if isinstance(db, TestDb) else f"sqlite+aiosqlite:///{db}",
        NOTIFIER_GRPC_ADDR="127.0.0.1:0",
        NOTIFIER_EMULATOR_ADDR="127.0.0.1:0",
        NOTIFIER_HTTP_ADDR="127.0.0.1:0",
        NOTIFIER_METRICS_ADDR="127.0.0.1:0",  # replicas side by side: a port each
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def sending_env(db: Path | TestDb, emu: EmulatorServer, **extra: str) -> dict[str, str]:
    """``notifier_env`` for a process that sends to the test's emulator ``emu`` (its
    account, token and sender), quiet below WARNING; ``extra`` adds or overrides."""
    return notifier_env(
        db,
        **{
            "TWILIO_ACCOUNT_SID": emu.account_sid,
            "TWILIO_AUTH_TOKEN": emu.auth_token,
            "TWILIO_WHATSAPP_FROM": DEV_FROM,
            "TWILIO_API_BASE_URL": emu.url,
            "NOTIFIER_LOG_LEVEL": "WARNING",
        }
        | extra,
    )


def start_server(env: dict[str, str], *args: str, timeout: float = 30) -> ServerProcess:
    """Start ``notifier serve`` and wait for the line that says where it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "notifier", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = _SERVING.search(line)
        if found:
            server = ServerProcess(proc, int(found.group(1)), "".join(lines))
            server.drain()
            return server
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


def start_logged(
    env: dict[str, str], log_path: Path, *args: str, timeout: float = 60
) -> ServerProcess:
    """``notifier serve ARGS`` with its output in ``log_path``, waiting for the line that
    says where gRPC listens. A file, not a pipe: a chatty process never blocks on it."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notifier", "serve", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = _SERVING.search(log_path.read_text())
        if found:
            return ServerProcess(proc, int(found.group(1)), log_path.read_text())
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError("server did not start:\n" + log_path.read_text())


def grpcurl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, *args], capture_output=True, text=True, timeout=timeout)


def run_notifier(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``notifier ARGS`` to completion (for commands that exit, or refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", "notifier", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def send_many(address: str, bodies: list[str], *, concurrency: int) -> list[str]:
    """One SendMessage per body to a test number, ``concurrency`` calls at a time, the
    way a busy caller loads a server under test; the message ids, in order."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = notifier_pb2_grpc.NotifierStub(channel)
        sem = asyncio.Semaphore(concurrency)

        async def one(body: str) -> str:
            async with sem:
                reply = await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body=body))
                return reply.message_id

        return await asyncio.gather(*(one(body) for body in bodies))


def start_webhooks(
    env: dict[str, str], log_path: Path, timeout: float = 30
) -> tuple[subprocess.Popen[bytes], str]:
    """``notifier serve webhooks`` as its own process; returns it and its base URL.

    Its output goes to a file, so a chatty sidecar can never block on a full pipe.
    """
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notifier", "serve", "webhooks"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = _SERVING_WEBHOOKS.search(log_path.read_text())
        if found:
            return proc, found.group(1)
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError("webhooks did not start:\n" + log_path.read_text())
