"""The files of a run folder that ``plan``, the suite and the report read without running it.

Below ``run`` (which writes them), so reading a folder's state imports no trainer, torch or
transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
EPISODES_FILE = "episodes.jsonl"  # per evaluation: every episode's task and outcome
MANIFEST_FILE = "manifest.json"
SUITE_FILE = "suite.json"  # in the results folder: the suite it was last run with
RESULT_KEYS = ("final", "best", "status")
DAMAGED = ".damaged"


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """``result.json`` when it is complete (JSON with final, best and status), else None."""
    data = _read_json(run_dir / RESULT_FILE)
    if isinstance(data, dict) and all(key in data for key in RESULT_KEYS):
        return data
    return None


def is_finished(run_dir: Path) -> bool:
    """A run is finished when its result and its manifest (what the report reads) are sound."""
    return read_result(run_dir) is not None and isinstance(
        _read_json(run_dir / MANIFEST_FILE), dict
    )


def set_aside(path: Path) -> Path:
    """Keep a damaged file for inspection as ``<name>.damaged``; returns the new path."""
    target = path.with_name(path.name + DAMAGED)
    os.replace(path, target)
    return target
