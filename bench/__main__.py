"""``python -m bench``: run every benchmark, print the table, write the results.

``BENCH_QUICK=1`` runs tiny workloads (a smoke test of the harness: figures are
meaningless); ``BENCH_OUT=DIR`` writes results.json and RESULTS.md there instead of
bench/; ``BENCH_ONLY=send,dispatch`` runs only those parts; ``BENCH_ROUNDS=N`` sets
the interleaved rounds of the parts with ratio targets (``bench.common.rounds``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import (
    alternatives,
    backlog,
    bulk,
    callbacks,
    dispatch,
    memory,
    metrics_scale,
    purge,
    ratelimit,
    replicas,
    send,
)
from bench.common import (
    HERE,
    Figure,
    failed,
    header,
    load_average,
    report,
    save,
    shared_emulator,
)
from notifier.heap import settle_heap

PARTS: dict[str, Callable[[], Awaitable[Figure | list[Figure]]]] = {
    "send": send.run,
    "bulk": bulk.run,
    "dispatch": dispatch.run,
    "backlog": backlog.run,
    "callbacks": callbacks.run,
    "replicas": replicas.run,
    "ratelimit": ratelimit.run,
    "memory": memory.run,
    "metrics": metrics_scale.run,
    "alternatives": alternatives.run,
    "purge": purge.run,
}


async def main() -> None:
    only = [p for p in os.environ.get("BENCH_ONLY", "").split(",") if p]
    load_before = load_average()
    figures: list[Figure] = []
    async with shared_emulator():
        settle_heap()  # the emulator in this process stamps arrivals: no long pauses
        for name, part in PARTS.items():
            if only and name not in only:
                continue
            print(f"bench: {name} ...", end=" ", flush=True)
            began = time.perf_counter()
            try:
                result = await part()
            except Exception as exc:  # one broken part must not lose the others' figures
                print(f"failed: {exc!r}", flush=True)
                figures.append(failed(name, exc))
                continue
            print(f"{time.perf_counter() - began:.0f} s", flush=True)
            figures += result if isinstance(result, list) else [result]
    head = header(load_before, load_average())
    print()
    print("\n".join(f"{k}: {v}" for k, v in head.items()))
    print(report(figures))
    save(figures, head, Path(os.environ.get("BENCH_OUT") or HERE))


if __name__ == "__main__":
    asyncio.run(main())
