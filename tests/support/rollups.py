"""The rollups' rebuild as plain SQLite text, for tests that write message rows behind
the service's back (standing in for the dispatcher and callbacks) and then read
GetMetrics: the rebuild counts what they wrote, as the service would have."""

from __future__ import annotations

import functools

from sqlalchemy import ClauseElement
from sqlalchemy.dialects import sqlite

from notifier.storage.rollups import rebuild


@functools.cache
def rebuild_sql() -> tuple[str, ...]:
    dialect = sqlite.dialect()
    return tuple(
        str(ClauseElement.compile(stmt, dialect=dialect, compile_kwargs={"literal_binds": True}))
        for stmt in rebuild()
        if isinstance(stmt, ClauseElement)
    )
