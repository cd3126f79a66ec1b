"""Shared helpers for the benchmarks: settings, subprocesses, timing, the results table."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from notifier.config import Settings, load_settings
from notifier.emulator import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, DEV_FROM

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"


def quick() -> bool:
    """``BENCH_QUICK=1``: tiny workloads, so a test can smoke-run the whole harness."""
    return os.environ.get("BENCH_QUICK", "") not in ("", "0")


def scale(full: int, small: int) -> int:
    return small if quick() else full


def rounds() -> int:
    """How many interleaved rounds a part comparing legs runs (``BENCH_ROUNDS``: an odd
    number, 3 by default, 1 when quick). This machine is shared: one leg's rate moved by
    a quarter from one minute to the next (the echo gave 2,563 and 4,269 /s with the
    same code), so one leg each made a ratio of two moments. Each round runs every leg
    once, in turn. Odd, so each leg's median is one round's figure, neither the kinder
    nor the harsher of two middles."""
    count = int(os.environ.get("BENCH_ROUNDS") or scale(3, 1))
    if count < 1 or count % 2 == 0:
        raise ValueError(f"BENCH_ROUNDS must be an odd number of rounds, not {count}")
    return count


def median_leg(
    legs: Sequence[dict[str, Any]], key: str = "rate", counted: tuple[str, ...] = ("errors",)
) -> dict[str, Any]:
    """The leg with the median ``key`` (of an odd count: ``rounds``), its figures kept
    together; each ``counted`` figure (failures) summed over every leg that has it, so a
    failure in any round shows; every leg's ``key`` in ``rounds``, in the order run."""
    if len(legs) % 2 == 0:
        raise ValueError(f"a median round needs an odd number of rounds, not {len(legs)}")
    middle = sorted(legs, key=lambda leg: leg[key])[len(legs) // 2]
    chosen = {**middle, "rounds": [leg[key] for leg in legs]}
    for name in counted:
        if any(name in leg for leg in legs):
            chosen[name] = sum(leg.get(name, 0) for leg in legs)
    return chosen


def rounds_note(legs: dict[str, dict[str, Any]], unit: str = "/s") -> str:
    """``legs``' per-round figures, as a note: "median of 3 interleaved rounds: echo
    4,252 / 2,563 / 4,269/s; ..." (milliseconds to a tenth)."""
    first = next(iter(legs.values()))
    if len(first["rounds"]) < 2:
        return ""
    shown = "{:,.1f}" if unit.strip() == "ms" else "{:,.0f}"
    parts = (
        f"{name} " + " / ".join(shown.format(v) for v in leg["rounds"]) + unit
        for name, leg in legs.items()
    )
    return f"median of {len(first['rounds'])} interleaved rounds: " + "; ".join(parts)


def joined(*notes: str) -> str:
    """A row's notes, the empty ones left out."""
    return "; ".join(n for n in notes if n)


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    ceiling: float | None
    ceiling_name: str
    target: str
    met: bool | None
    """None: no target (an alternative, shown for comparison)."""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> str:
        if not self.ceiling:
            return "-"
        return f"{self.value / self.ceiling:.0%}"


def failed(part: str, exc: Exception) -> Figure:
    """The row of a part that could not run (say, the shared PostgreSQL server was full)."""
    return Figure(
        name=f"{part}: did not run",
        value=0.0,
        unit="",
        ceiling=None,
        ceiling_name="",
        target="-",
        met=False,
        note=repr(exc)[:200],
    )


def cpu_figure(name: str, runs: dict[str, dict[str, Any]], what: str) -> Figure:
    """The server's CPU per message on each backend: PostgreSQL's beside SQLite's."""
    sqlite, pg = (runs[b]["cpu_ms_per_message"] for b in ("sqlite", "postgresql"))
    return Figure(
        name=f"{name} (PostgreSQL)",
        value=pg,
        unit="ms",
        ceiling=sqlite,
        ceiling_name="SQLite, same run",
        target="-",
        met=None,
        note=f"CPU-seconds of the server process per {what}: "
        f"SQLite {sqlite:.2f} ms, PostgreSQL {pg:.2f} ms (PostgreSQL's own processes not counted)",
    )


def bench_settings(db: Path | str, **env: Any) -> Settings:
    """Settings for a server on ``db``: a SQLite file, or a database URL."""
    url = db if isinstance(db, str) else f"sqlite+aiosqlite:///{db}"
    values: dict[str, Any] = {
        "NOTIFIER_DATABASE_URL": url,
        "NOTIFIER_GRPC_ADDR": "127.0.0.1:0",
        "NOTIFIER_HTTP_ADDR": "127.0.0.1:0",
        "NOTIFIER_LOG_LEVEL": "WARNING",
        "NOTIFIER_METRICS_ADDR": "127.0.0.1:0",
    }
    values.update(env)
    return load_settings(**values)


def emulator_env(url: str) -> dict[str, Any]:
    """Settings that send through the emulator at ``url`` with its development account."""
    return {
        "TWILIO_ACCOUNT_SID": DEV_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": DEV_AUTH_TOKEN,
        "TWILIO_WHATSAPP_FROM": DEV_FROM,
        "TWILIO_API_BASE_URL": url,
    }


class CpuMeter:
    """CPU-seconds this process spends (every thread: gRPC's C core included) inside
    the block: the server's cost when the load comes from another process."""

    def __enter__(self) -> CpuMeter:
        self.start = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.process_time() - self.start


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-int(pct * len(ordered)) // 100))
    return ordered[min(rank, len(ordered)) - 1]


class Child:
    """A subprocess of the benchmark; its output is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line_matching(self, pattern: str, seconds: float = 60.0) -> re.Match[str]:
        assert self.proc.stdout is not None
        regex = re.compile(pattern)
        async with asyncio.timeout(seconds):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError(f"child exited before printing {pattern!r}")
                found = regex.search(raw.decode(errors="replace"))
                if found:
                    return found

    async def output(self, seconds: float = 900.0) -> str:
        async with asyncio.timeout(seconds):
            out, _ = await self.proc.communicate()
        if self.proc.returncode != 0:
            raise RuntimeError(f"child failed with status {self.proc.returncode}")
        return out.decode()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def spawn(*args: str, env: dict[str, str] | None = None, quiet: bool = False) -> Child:
    """``python args...`` with this interpreter; stdout piped, stderr inherited unless
    ``quiet`` (the emulator logs every callback nobody receives; Celery warns about root)."""
    full_env = {**os.environ, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL if quiet else None,
        env=full_env,
        cwd=HERE.parent,
    )
    return Child(proc)


async def serve_grpc(db_url: str, emulator_url: str, **env: Any) -> Child:
    """``notifier serve grpc`` (the API and the dispatcher) in a process of its own, on
    ``db_url``, sending to the emulator at ``emulator_url``; returned once it serves."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFIER_", "TWILIO_"))}
    child = await spawn(
        "-m",
        "notifier",
        "serve",
        "grpc",
        env=clean
        | {
            "NOTIFIER_DATABASE_URL": db_url,
            "NOTIFIER_GRPC_ADDR": "127.0.0.1:0",
            "NOTIFIER_HTTP_ADDR": "127.0.0.1:0",
            "NOTIFIER_LOG_LEVEL": "WARNING",
            "NOTIFIER_METRICS_ADDR": "127.0.0.1:0",  # replicas side by side
            "PYTHONUNBUFFERED": "1",
            **{k: str(v) for k, v in (emulator_env(emulator_url) | env).items()},
        },
    )
    await child.line_matching(r"gRPC serving on")
    return child


_shared_emulator: str | None = None


@contextlib.asynccontextmanager
async def emulator_process() -> AsyncIterator[str]:
    """``notifier emulator`` in its own process (its own event loop and core); yields its URL.

    The emulator does what Twilio does for every accepted message: it answers 201 with
    the message resource and plays the message's lifecycle (sent, delivered, read) on
    timers; without a StatusCallback nothing is posted back. Inside ``shared_emulator``
    the one process is reused, reset (traffic and timers forgotten) for each user.
    """
    if _shared_emulator is not None:
        await _reset(_shared_emulator)
        yield _shared_emulator
        return
    child = await spawn("-m", "notifier", "emulator", "--port", "0", quiet=True)
    try:
        found = await child.line_matching(r"listening on (http://\S+)")
        yield found.group(1)
    finally:
        await child.stop()


async def _reset(url: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.post(f"{url}/_emulator/reset") as r:
        r.raise_for_status()


@contextlib.asynccontextmanager
async def shared_emulator() -> AsyncIterator[None]:
    """One emulator process for every benchmark inside (starting one takes seconds)."""
    global _shared_emulator
    async with emulator_process() as url:
        _shared_emulator = url
        try:
            yield
        finally:
            _shared_emulator = None


async def run_load(*args: str) -> dict[str, Any]:
    """Run ``python -m bench.load args...`` in another process; its JSON answer."""
    child = await spawn("-m", "bench.load", *args)
    try:
        result: dict[str, Any] = json.loads((await child.output()).strip().splitlines()[-1])
    finally:
        await child.stop()
    return result


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {cpu_model()}, "
        f"Python {platform.python_version()}"
    )


def _fmt(value: float, unit: str) -> str:
    if unit == "ms" and value < 10:
        return f"{value:,.2f} {unit}"
    if unit in ("ms",):
        return f"{value:,.1f} {unit}"
    if unit == "/s" and value < 100:
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f} {unit}"


def _verdict(f: Figure) -> str:
    if f.met is None:
        return ""
    return "ok" if f.met else "MISSED"


def rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [
        ("figure", "measured", "ceiling (same run)", "ratio", "target", "", "notes")
    ]
    for f in figures:
        ceiling = f"{_fmt(f.ceiling, f.unit)} ({f.ceiling_name})" if f.ceiling else "-"
        out.append((f.name, _fmt(f.value, f.unit), ceiling, f.ratio, f.target, _verdict(f), f.note))
    return out


def report(figures: list[Figure]) -> str:
    table = rows(figures)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)).rstrip() for r in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  * {f.name}: {f.note}" for f in figures if f.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def markdown(figures: list[Figure], header: dict[str, str]) -> str:
    table = rows(figures)
    lines = ["# Benchmark results (`make bench`)", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in table[1:]]
    return "\n".join(lines) + "\n"


def header(load_before: str, load_after: str) -> dict[str, str]:
    return {
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load average (1, 5, 15 min) before / after": f"{load_before} / {load_after}",
        "mode": "quick (BENCH_QUICK=1: tiny workloads, figures meaningless)" if quick() else "full",
    }


def save(figures: list[Figure], head: dict[str, str], folder: Path = HERE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {**head, "figures": [asdict(f) | {"ratio": f.ratio} for f in figures]}
    (folder / RESULTS.name).write_text(json.dumps(data, indent=2) + "\n")
    (folder / RESULTS_MD.name).write_text(markdown(figures, head))


def fill_outbox(
    db_path: Path,
    count: int,
    *,
    status: str = "pending",
    with_sids: bool = False,
    chunk: int = 50_000,
) -> None:
    """Put ``count`` template messages straight into the SQLite file (schema must exist).

    Bulk SQL is the fast way to set up a large queue; the rows are what SendMessage
    stores (message row, its first status event). Blocking: call it from a thread.
    """
    import sqlite3

    now = int(time.time() * 1000)
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")  # setup only: nothing is measured here
        for start in range(0, count, chunk):
            batch = range(start, min(count, start + chunk))
            conn.executemany(
                "INSERT INTO messages (id, caller, channel, to_addr, content_sid, variables,"
                " status, twilio_sid, attempts, next_attempt_at, priority, created_at,"
                " updated_at) VALUES (?, '', 'whatsapp', ?, ?, ?, ?, ?, 0, ?, 0, ?, ?)",
                (
                    (
                        f"01BENCH{i:019d}",
                        f"+1415555{i % 10000:04d}",
                        "HX" + "ab" * 16,
                        json.dumps({"1": f"customer {i}"}),
                        status,
                        f"SM{i:032x}" if with_sids else None,
                        now,
                        now,
                        now,
                    )
                    for i in batch
                ),
            )
            conn.executemany(
                "INSERT INTO status_events (message_id, status, source, occurred_at, applied)"
                " VALUES (?, ?, 'api', ?, 1)",
                ((f"01BENCH{i:019d}", status, now) for i in batch),
            )
            conn.commit()
    finally:
        conn.close()


async def create_schema(db_path: Path) -> None:
    from notifier.storage.engine import create_database
    from notifier.storage.migrate import upgrade

    db = create_database(f"sqlite+aiosqlite:///{db_path}")
    try:
        await upgrade(db.writer)
    finally:
        await db.dispose()


def _scalar(db_path: Path, sql: str) -> Any:
    """One value of ``sql`` on a SQLite connection of its own (blocking)."""
    import sqlite3

    conn = sqlite3.connect(db_path, timeout=30)
    try:
        (value,) = conn.execute(sql).fetchone()
        return value
    finally:
        conn.close()


def count_rows(db_path: Path, where: str) -> int:
    """``SELECT count(*) FROM messages WHERE ...`` (blocking)."""
    return int(_scalar(db_path, f"SELECT count(*) FROM messages WHERE {where}"))  # noqa: S608


def any_row(db_path: Path, where: str) -> bool:
    """Whether any message ``WHERE ...`` exists (blocking)."""
    return bool(_scalar(db_path, f"SELECT EXISTS (SELECT 1 FROM messages WHERE {where})"))  # noqa: S608
