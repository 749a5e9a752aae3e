"""Wall time and peak memory of the quickstart (targets: ≤ 10 minutes, ≤ 3 GiB).

    python benchmarks/quickstart.py

Runs ``sdar-bench run suites/quickstart.yaml`` into a fresh results directory as a child process
and reads its peak resident memory from the OS.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "sdar_bench.cli",
                "run",
                str(ROOT / "suites" / "quickstart.yaml"),
                "-o",
                out,
            ],
            check=True,
        )
        seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # Linux: KiB
    print(f"quickstart wall time {seconds / 60:.1f} min (target <= 10), ratio {seconds / 600:.2f}")
    print(f"peak RSS {peak_gib:.2f} GiB (target <= 3), ratio {peak_gib / 3:.2f}")


if __name__ == "__main__":
    main()
