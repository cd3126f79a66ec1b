"""Shared helpers for the benchmarks: temporary settings, timing, the results table."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from notifier.config import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results.json"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    ceiling: float | None
    ceiling_name: str
    target: str
    met: bool

    @property
    def ratio(self) -> str:
        if not self.ceiling:
            return "-"
        return f"{self.value / self.ceiling:.0%}"


def bench_settings(db_path: Path, **env: Any) -> Settings:
    values: dict[str, Any] = {
        "NOTIFIER_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
        "NOTIFIER_GRPC_ADDR": "127.0.0.1:0",
        "NOTIFIER_LOG_LEVEL": "WARNING",
    }
    values.update(env)
    return load_settings(**values)


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def report(figures: list[Figure]) -> str:
    rows = [("figure", "measured", "ceiling (same run)", "ratio", "target", "")]
    for f in figures:
        ceiling = f"{f.ceiling:,.0f} {f.unit} ({f.ceiling_name})" if f.ceiling else "-"
        rows.append(
            (
                f.name,
                f"{f.value:,.0f} {f.unit}",
                ceiling,
                f.ratio,
                f.target,
                "ok" if f.met else "MISSED",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def save(figures: list[Figure]) -> None:
    data = {"machine": machine(), "figures": [asdict(f) for f in figures]}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
