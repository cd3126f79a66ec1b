"""Run the emulator in-process on a real port: for tests, and for ``notifier emulator``.

``EmulatorServer`` serves the app with uvicorn inside the caller's event loop, so a test
talks to it over real HTTP (the SDK, aiohttp) while reading its state directly. It binds
the socket itself, so a busy port is a plain ``OSError`` instead of uvicorn's
``sys.exit``, and it leaves signal handling to its owner.
"""

from __future__ import annotations

import asyncio
import signal
from types import TracebackType
from typing import Self

from notifier.asgi_server import InProcessServer
from notifier.emulator import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN
from notifier.emulator.app import Credentials, Emulator, create_app
from notifier.emulator.faults import Faults
from notifier.emulator.state import EmulatorState
from notifier.heap import settle_heap


class EmulatorServer:
    """The emulator listening on ``host:port`` (port 0 picks a free one); an async context."""

    def __init__(
        self,
        account_sid: str = DEV_ACCOUNT_SID,
        auth_token: str = DEV_AUTH_TOKEN,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        credentials = Credentials(account_sid, auth_token, api_key, api_secret)
        self.emulator = Emulator(credentials, faults)
        self._host = host
        self._requested_port = port
        self._http: InProcessServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:54321``: what ``client.api.base_url`` should be set to."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def state(self) -> EmulatorState:
        return self.emulator.state

    @property
    def faults(self) -> Faults:
        return self.emulator.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self.emulator.faults = faults

    @property
    def account_sid(self) -> str:
        return self.emulator.credentials.account_sid

    @property
    def auth_token(self) -> str:
        return self.emulator.credentials.auth_token

    async def reset(self) -> None:
        """Forget traffic and pending callbacks, and clear the faults."""
        await self.emulator.reset()

    async def start(self) -> None:
        """Listen, and return once uvicorn has started (lifespan done, socket open)."""
        self._http = InProcessServer(create_app(self.emulator), self._host, self._requested_port)
        await self._http.start()
        self.port = self._http.port

    async def stop(self) -> None:
        """Stop: wake held requests, close connections, cancel pending callbacks."""
        if self._http is None:
            return
        self.emulator.begin_shutdown()
        try:
            await self._http.stop()
        finally:
            self._http = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def run_emulator(
    host: str,
    port: int,
    account_sid: str = DEV_ACCOUNT_SID,
    auth_token: str = DEV_AUTH_TOKEN,
    faults: Faults | None = None,
    *,
    api_key: str | None = None,
    api_secret: str | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (``notifier emulator``); returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = EmulatorServer(
        account_sid,
        auth_token,
        api_key=api_key,
        api_secret=api_secret,
        faults=faults,
        host=host,
        port=port,
    )
    async with server:
        settle_heap()  # its stamps are what benchmarks count: no 100 ms pauses in them
        print(
            f"notifier: Twilio EMULATOR listening on {server.url} (account {account_sid})",
            flush=True,
        )
        await stop.wait()
    print("notifier: emulator stopped", flush=True)
    return 0
