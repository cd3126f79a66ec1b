"""An event loop in a thread, for servers that must outlive one test.

Hypothesis runs many examples inside one test function, and a module-scoped server
must survive across tests: pytest-asyncio gives every test its own loop, so such a
server lives on a loop of its own, in a thread, and sync tests call it over real
sockets exactly as a separate client process would.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def table_counts(db_path: Path) -> dict[str, int]:
    """Rows per table, read by an outside connection: what "stored something" means.
    GetMetrics' rollups and their journals are left out: they are derived from the
    other tables, and the background folder moves journal rows into rollups at any time."""
    with sqlite3.connect(db_path) as conn:
        names = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%' AND name != 'alembic_version'"
                " AND name NOT LIKE 'rollup_%' AND name NOT LIKE 'journal_%'"
            )
        ]
        return {
            name: int(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])  # noqa: S608
            for name in names
        }
