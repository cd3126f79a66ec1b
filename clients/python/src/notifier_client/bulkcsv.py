"""Reading a bulk CSV into BulkItems, one line at a time, without stopping at bad lines.

Only what cannot travel in a BulkItem is checked here (malformed JSON, a line with too
many cells): everything else (phone numbers, missing content, tag syntax) is the server's
to judge, so the CLI never disagrees with the service about what is valid.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from notifier_proto.v1 import notifier_pb2 as pb

COLUMNS = ("to", "body", "content_sid", "variables", "media_urls", "tags", "idempotency_key")
_LIST_SEPARATORS = re.compile(r"[|\s]+")


class CsvFormatError(ValueError):
    """The file as a whole cannot be used (no header, unknown or missing columns)."""


class LineError(ValueError):
    """One line cannot be read; ``field`` names the column at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Row:
    """One data line: an item to send, or why the line could not be read."""

    line: int
    to: str
    item: pb.BulkItem | None = None
    error: LineError | None = None


def _split(cell: str) -> list[str]:
    return [part for part in _LIST_SEPARATORS.split(cell.strip()) if part]


def _variables(cell: str) -> dict[str, str]:
    """A JSON object of template variables; numbers are accepted and sent as text."""
    try:
        value = json.loads(cell)
    except json.JSONDecodeError as exc:
        raise LineError("variables", f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise LineError("variables", 'must be a JSON object, e.g. {"1": "Ana"}')
    out: dict[str, str] = {}
    for key, val in value.items():
        if isinstance(val, bool) or not isinstance(val, str | int | float):
            raise LineError("variables", f"the value of {key!r} must be text or a number")
        out[key] = str(val)
    return out


def _item(line: int, record: dict[str, str]) -> pb.BulkItem:
    cell = {name: (record.get(name) or "").strip() for name in COLUMNS}
    item = pb.BulkItem(
        correlation_id=str(line),
        to=cell["to"],
        media_urls=_split(cell["media_urls"]),
        tags=_split(cell["tags"].replace(",", " ")),
        idempotency_key=cell["idempotency_key"],
    )
    if cell["variables"]:
        item.variables.update(_variables(cell["variables"]))
    if cell["body"]:
        item.body = record.get("body") or ""  # the text as written, spaces included
    if cell["content_sid"]:
        item.content_sid = cell["content_sid"]
    return item


def _check_header(fields: list[str] | None, path: Path) -> None:
    if not fields:
        raise CsvFormatError(f"{path}: empty file; the first line must name the columns")
    unknown = [f for f in fields if f not in COLUMNS]
    if unknown:
        raise CsvFormatError(
            f"{path}: unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}"
        )
    if "to" not in fields:
        raise CsvFormatError(f"{path}: no 'to' column")


def read_rows(path: Path) -> Iterator[Row]:
    """Every data line of ``path`` as a Row; line numbers count the header as line 1."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        _check_header(list(reader.fieldnames or []), path)
        for record in reader:
            line = reader.line_num
            to = (record.get("to") or "").strip()
            if None in record:  # csv puts cells beyond the header under the key None
                problem = "more cells than the header has columns"
                yield Row(line, to, error=LineError("line", problem))
                continue
            try:
                yield Row(line, to, item=_item(line, record))
            except LineError as exc:
                yield Row(line, to, error=exc)


def count_rows(path: Path) -> int:
    """How many data lines ``path`` has, for the progress bar. This first pass also finds
    what would break the reading itself (not UTF-8, broken quoting) before anything is
    sent, and names the line."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            return max(sum(1 for cells in reader if cells) - 1, 0)
        except UnicodeDecodeError as exc:
            raise CsvFormatError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise CsvFormatError(f"{path}, line {reader.line_num}: {exc}") from None
