"""The JSON-lines logs every run writes (metrics.jsonl, eval.jsonl): one place that reads and
writes them, tolerant of the half-written last line a killed process leaves behind.

A failed write (a full disk, a lost mount) is re-raised as an ``OSError`` that names the file,
so the run's crash reason says which write failed; a temporary file is removed first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a log, up to the first line that is not a JSON object; [] without a file."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line half-written by a killed process ends the log
        if not isinstance(row, dict):
            break  # not one of our rows: the log is damaged from here on
        rows.append(row)
    return rows


def _named(exc: OSError, path: Path) -> OSError:
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    try:
        with path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    except OSError as exc:
        raise _named(exc, path) from exc


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _named(exc, path) from exc


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace the log with ``rows`` in one rename."""
    write_text_atomic(
        path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)
    )


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))
