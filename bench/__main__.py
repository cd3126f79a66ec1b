"""``python -m bench``: run every benchmark, print the table, write bench/results.json."""

from __future__ import annotations

import asyncio

from bench import bulk
from bench.common import machine, report, save


async def main() -> None:
    figures = [await bulk.run()]
    print(f"machine: {machine()}")
    print(report(figures))
    save(figures)


if __name__ == "__main__":
    asyncio.run(main())
