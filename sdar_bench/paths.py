"""Where sdar-bench keeps what it builds: tiny models and warm-start checkpoints."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SDAR_BENCH_CACHE`` or ``~/.cache/sdar-bench``: shared by every suite on the machine."""
    root = os.environ.get("SDAR_BENCH_CACHE") or Path.home() / ".cache" / "sdar-bench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
