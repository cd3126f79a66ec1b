"""Serve an ASGI app with uvicorn inside the running event loop, on a real port.

Used by the webhook sidecar and the Twilio emulator. It binds the socket itself, so a
busy port is a plain ``OSError`` instead of uvicorn's ``sys.exit``, and it leaves
signal handling to the owner of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

GRACEFUL_STOP_SECONDS = 5


class _NoSignals(uvicorn.Server):
    """uvicorn without its signal handlers: the owner of the event loop decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose
    # protocol says TCP, and without it every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class InProcessServer:
    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None
    ) -> None:
        """``sock``: an already bound socket (its port known before the app is built)."""
        self._app = app
        self.host = host
        self._requested_port = port
        self._sock = sock
        self._server: _NoSignals | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = sock.getsockname()[1] if sock is not None else 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen, and return once uvicorn has started (lifespan done, socket open)."""
        config = uvicorn.Config(
            self._app,
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_STOP_SECONDS,
        )
        server = _NoSignals(config)
        self._server = server
        sock = self._sock or bind(self.host, self._requested_port)
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)
        self.port = server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._server = None
            self._task = None
